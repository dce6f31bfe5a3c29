"""Group-relative advantage estimators, one registry.

Rewards arrive as a (P, G) tensor: P prompts, G samples each. Every estimator returns a (P, G)
tensor of per-sequence advantages:

* `grpo`   (A_i = (r_i - mean(r)) / (std(r) + eps)): DeepSeekMath, arXiv 2402.03300, sec. 4.1.2.
           std is the unbiased sample std of the group (as in TRL and verl).
* `drgrpo` (A_i = r_i - mean(r)): Dr. GRPO, arXiv 2503.20783 (GRPO without the std division).
* `rloo`   (A_i = r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean(r))): Ahmadian et al. 2024,
           arXiv 2402.14740 (leave-one-out baseline); needs G >= 2.

A group whose rewards are all equal gets advantage 0 under every estimator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Estimator = Callable[[torch.Tensor, float], torch.Tensor]
_ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    def decorate(fn: Estimator) -> Estimator:
        if name in _ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _ESTIMATORS[name] = fn
        return fn

    return decorate


def available_estimators() -> list[str]:
    return sorted(_ESTIMATORS)


def check_estimator(name: str) -> None:
    if name not in _ESTIMATORS:
        raise ValueError(
            f"unknown advantage estimator {name!r}; available: {', '.join(available_estimators())}"
        )


def compute_advantages(rewards: torch.Tensor, estimator: str = "grpo", eps: float = 1e-6) -> torch.Tensor:
    """Per-sequence advantages from (P, G) rewards."""
    check_estimator(estimator)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (prompts, samples), got shape {tuple(rewards.shape)}")
    return _ESTIMATORS[estimator](rewards.to(torch.float64), eps).to(rewards.dtype)


@register_estimator("grpo")
def _grpo(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    # A constant group has centred == 0: keep it 0 even with eps = 0 (no 0 / 0).
    return torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))


@register_estimator("drgrpo")
def _drgrpo(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    return rewards - rewards.mean(dim=1, keepdim=True)


@register_estimator("rloo")
def _rloo(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    g = rewards.shape[1]
    if g < 2:
        raise ValueError("rloo needs at least 2 samples per prompt")
    return (rewards - rewards.mean(dim=1, keepdim=True)) * (g / (g - 1))
