"""The policy the engine, log-prob and attention tests share: the session's random base model
(conftest.base_model) with EOS made likely, its prompts and the HF engine around it. Its fixtures
(`policy`, `device_policy`) are in conftest.py."""

import pytest
import torch

from clipbench.engines import HFEngine
from clipbench.models import load_model

PROMPTS = ["Compute: 1+2\n", "Compute: 3-1+4-1+5-9+2-6\n", "What?\n"]


# The central checks also run on a GPU where there is one (unverified here: no CUDA device).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]
TOLERANCE = {"cpu": 1e-5, "cuda": 1e-4}


def load_policy(base_model, device: str = "cpu"):
    """The shared random base model, with EOS made likely (its tied embedding row scaled up) so
    rows finish at many different steps."""
    model, tokenizer = load_model(base_model, device=device)
    with torch.no_grad():
        model.get_output_embeddings().weight[tokenizer.eos_token_id] *= 16.0
    return model, tokenizer


def engine(policy, **overrides):
    model, tokenizer = policy
    settings = {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 24} | overrides
    return HFEngine(model, tokenizer, **settings)
