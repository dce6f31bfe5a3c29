"""The precision of the policy's forwards (`TrainConfig.dtype`): float32, or bfloat16 autocast.

* `set_precision(model, dtype)`: "float32" leaves the model as it is (every forward exactly as
  before this setting existed); "bfloat16" makes clipbench's forwards of the model (the log-probs
  of `clipbench.logprobs.token_logprobs`: old, update, KL reference; the HF sampler of
  `clipbench.engines`) run under `torch.autocast` at bfloat16, while its parameters, their
  gradients and the optimizer's state stay float32.
* `autocast(model)`: the context those forwards enter (a no-op for a float32 model).

Why autocast rather than bfloat16 weights: an AdamW step is about `lr` per weight, and bfloat16
keeps 8 significant bits, so a weight of magnitude w moves only if lr > ~w / 256; at RL learning
rates (1e-6 on weights of ~1e-2) bfloat16 weights would round nearly every update away. Keeping
float32 master weights fixes that; autocast is PyTorch's own way of computing in bfloat16 from
them (matmuls and attention in bfloat16, reductions and norms in float32), with float32 gradients
and optimizer state and float32 checkpoints, so a resumed run continues bit for bit. The memory
is that of float32 weights (16 bytes per parameter with AdamW, the same as bfloat16 weights with
a float32 master copy); activations of matmuls are halved. docs/training.md, "Precision and
memory".

The bottom floor of the sampling and log-prob modules: it imports no other clipbench module.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = ("float32", "bfloat16")  # the values of TrainConfig.dtype
_AUTOCAST = "clipbench_autocast_dtype"  # the attribute of a model that `set_precision` sets


def set_precision(model, dtype: str):
    """Make clipbench's forwards of `model` compute in `dtype` (one of `DTYPES`); returns `model`.

    "bfloat16" needs a float32 model (its parameters are the master weights); "float32" removes
    any earlier setting."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model.__dict__.pop(_AUTOCAST, None)
    if dtype == "float32":
        return model
    kinds = {p.dtype for p in model.parameters()}
    if kinds != {torch.float32}:
        names = ", ".join(sorted(str(k).removeprefix("torch.") for k in kinds))
        raise ValueError(f"bfloat16 autocast keeps float32 master weights; this model's are {names}")
    setattr(model, _AUTOCAST, getattr(torch, dtype))
    return model


def compute_dtype(model) -> torch.dtype | None:
    """The dtype `autocast(model)` computes in, or None when it does not autocast."""
    return getattr(model, _AUTOCAST, None)


def autocast(model):
    """The context of a forward of `model`: torch.autocast at its `set_precision` dtype on its
    device, or nothing at all (a float32 model: the forward is exactly as without this)."""
    dtype = compute_dtype(model)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=model.device.type, dtype=dtype)
