"""Advantages: how a sample's reward becomes the weight of its policy gradient (pure numpy).

- DDPO (arXiv 2305.13301): rewards normalised over the batch, or per prompt with [`PerPromptStatTracker`].
- GRPO (arXiv 2402.03300), as SafeDiffusion-R1 uses it: [`group_advantages`], each reward relative to the other
  samples of its own prompt group.

Non-finite rewards get advantage 0 everywhere and are left out of every statistic.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class PerPromptStatTracker:
    """Running reward statistics per prompt (DDPO's per-prompt normalisation).

    Args:
        buffer_size (`int`): rewards kept per prompt.
        min_count (`int`): below this many rewards, the whole batch's mean and std are used instead.
    """

    def __init__(self, buffer_size: int, min_count: int):
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.stats: dict[str, deque] = {}

    def update(self, prompts, rewards: np.ndarray) -> np.ndarray:
        prompts = np.asarray(prompts)
        rewards = np.asarray(rewards, dtype=np.float64)
        advantages = np.zeros_like(rewards)
        finite = np.isfinite(rewards)
        for prompt in np.unique(prompts):
            mask = (prompts == prompt) & finite
            buffer = self.stats.setdefault(str(prompt), deque(maxlen=self.buffer_size))
            buffer.extend(rewards[mask].tolist())
            if len(buffer) < self.min_count:
                mean, std = rewards[finite].mean(), rewards[finite].std() + 1e-6
            else:
                mean, std = np.mean(buffer), np.std(buffer) + 1e-6
            advantages[mask] = (rewards[mask] - mean) / std
        return advantages

    def get_stats(self) -> dict[str, dict[str, float]]:
        return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "count": len(v)} for k, v in self.stats.items()}


def batch_advantages(rewards: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """DDPO's batch normalisation: (r - mean) / (std + eps) over the finite rewards, 0 for the others.

    Args:
        rewards (`np.ndarray`): (N,) rewards.
        eps (`float`, *optional*, defaults to `1e-8`): added to the (population) std.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    finite = np.isfinite(rewards)
    adv = np.zeros_like(rewards)
    if finite.any():
        r = rewards[finite]
        adv[finite] = (r - r.mean()) / (r.std() + eps)
    return adv


def group_advantages(
    rewards: np.ndarray, group_size: int, scale: str = "group", eps: float = 1e-8, std: str = "unbiased"
) -> tuple[np.ndarray, dict]:
    """Group-relative advantages for rewards laid out group after group.

    Non-finite rewards get advantage 0 and are left out of their group's statistics; a group whose finite rewards
    have (numerically) zero variance, or fewer than two finite rewards, gets advantage 0.

    Args:
        rewards (`np.ndarray`): (num_groups * group_size,) rewards, group after group.
        group_size (`int`): G.
        scale (`str`, *optional*, defaults to `"group"`): `"group"` (r - mean_g) / (std_g + eps), `"batch"` divides by
            the std of the whole batch, `"none"` only subtracts the group mean.
        eps (`float`, *optional*, defaults to `1e-8`): added to the std.
        std (`str`, *optional*, defaults to `"unbiased"`): `"unbiased"` divides the sum of squares by n - 1 (torch's
            default std, as TRL's `GRPOTrainer` and the SafeDiffusion-R1 reference code), `"population"` by n.

    Returns:
        `(advantages, stats)` with `stats` holding `zero_std_fraction` and `nonfinite`.
    """
    if std not in ("unbiased", "population"):
        raise ValueError(f"std must be 'unbiased' or 'population', got {std!r}")
    ddof = 1 if std == "unbiased" else 0
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 1 or rewards.size % group_size:
        raise ValueError(f"rewards ({rewards.shape}) must be 1-D with a length that is a multiple of {group_size}")
    r = rewards.reshape(-1, group_size)  # (num_groups, G)
    finite = np.isfinite(r)
    count = finite.sum(axis=1, keepdims=True)
    safe = np.where(finite, r, 0.0)
    mean = safe.sum(axis=1, keepdims=True) / np.maximum(count, 1)
    var = (np.where(finite, (r - mean) ** 2, 0.0)).sum(axis=1, keepdims=True) / np.maximum(count - ddof, 1)
    group_std = np.sqrt(var)  # (num_groups, 1)
    scale_floor = 1e-12 * np.maximum(1.0, np.abs(mean))
    degenerate = (count < 2) | (group_std <= scale_floor)  # (num_groups, 1)
    centred = np.where(finite, r - mean, 0.0)
    if scale == "group":
        adv = centred / (group_std + eps)
    elif scale == "batch":
        all_finite = rewards[np.isfinite(rewards)]
        batch_std = all_finite.std(ddof=ddof) if all_finite.size > ddof else 0.0
        adv = centred / (batch_std + eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    adv = np.where(degenerate | ~finite, 0.0, adv)
    stats = {"zero_std_fraction": float(degenerate.mean()), "nonfinite": int((~finite).sum())}
    return adv.reshape(-1), stats
