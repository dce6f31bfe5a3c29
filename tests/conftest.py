"""Fixtures shared by several test files."""

import pytest
import torch

from clipbench.models import build_tiny_model, build_tokenizer, save_model
from clipbench.trainer import Trainer


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> str:
    """A small random Qwen2 policy saved as an HF model directory (no SFT): for training mechanics."""
    tokenizer = build_tokenizer()
    model = build_tiny_model(
        tokenizer, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128, seed=0
    )
    return str(save_model(model, tokenizer, tmp_path_factory.mktemp("base") / "model"))


def parity_reward(self, samples, answers):
    """A reward with a gradient for a random model (the verifier would give it 0 everywhere):
    1 when the completion text has even length."""
    rewards = torch.tensor([float(len(t) % 2 == 0) for t in samples.texts], dtype=torch.float64)
    return rewards, {"ok": len(answers)}


@pytest.fixture
def parity(monkeypatch):
    """`Trainer._score` replaced by `parity_reward`; everything else stays on the real code path."""
    monkeypatch.setattr(Trainer, "_score", parity_reward)
