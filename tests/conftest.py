"""Fixtures shared by several test files."""

import pytest

from clipbench.models import build_tiny_model, build_tokenizer, save_model


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> str:
    """A small random Qwen2 policy saved as an HF model directory (no SFT): for training mechanics."""
    tokenizer = build_tokenizer()
    model = build_tiny_model(
        tokenizer, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128, seed=0
    )
    return str(save_model(model, tokenizer, tmp_path_factory.mktemp("base") / "model"))
