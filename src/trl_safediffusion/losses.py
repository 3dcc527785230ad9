"""The policy-gradient losses of one flat batch of denoising steps (pure torch).

- [`clipped_surrogate_loss`]: PPO's clipped objective (arXiv 1707.06347), the DDPO and GRPO policy term.
- [`approx_kl`] and [`clip_fraction`]: the diagnostics TRL's DDPO logs next to it.
- [`same_std_gaussian_kl`]: the KL between two Gaussian steps with the same std, SafeDiffusion-R1's penalty to the
  reference policy (the DDIM and the flow SDE steps of two models at one state share their std).
- [`feature_anchor_loss`]: a weighted squared feature gap between the policy's and the reference's predicted clean
  latents (the structure anchor).
"""

from __future__ import annotations

import torch


def clipped_surrogate_loss(advantages: torch.Tensor, clip_range: float, ratio: torch.Tensor) -> torch.Tensor:
    """PPO's clipped objective as a loss: mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.mean(torch.maximum(unclipped, clipped))


def approx_kl(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """TRL DDPO's `approx_kl`: 0.5 * mean((log p - log p_old)^2)."""
    return 0.5 * torch.mean((log_prob - old_log_prob) ** 2)


def clip_fraction(ratio: torch.Tensor, clip_range: float) -> torch.Tensor:
    """Fraction of the ratios outside [1 - clip_range, 1 + clip_range]."""
    return torch.mean((torch.abs(ratio - 1.0) > clip_range).float())


def same_std_gaussian_kl(mean_a: torch.Tensor, mean_b: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) KL(N(mean_a, std^2) || N(mean_b, std^2)) = (mean_a - mean_b)^2 / (2 std^2), averaged over the latent
    dimensions like the log-probabilities."""
    kl = ((mean_a - mean_b.to(mean_a.dtype)) ** 2) / (2 * std**2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def feature_anchor_loss(features: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, total: int) -> torch.Tensor:
    """sum_i w_i * mean((features_i - target_i)^2) / total.

    Args:
        features (`torch.Tensor`): (n, ...) features of the policy's predicted clean latents, with gradient.
        target (`torch.Tensor`): (n, ...) the reference's features, same shape.
        weights (`torch.Tensor`): (n,) weight of each row.
        total (`int`): the size of the whole batch the rows were taken from: the mean is over all of it, so that the
            anchor's size does not depend on how many rows carry it.
    """
    if features.shape != target.shape or features.shape[0] != weights.shape[0]:
        raise ValueError(
            f"structure features {tuple(features.shape)} and target {tuple(target.shape)} must have the same shape "
            f"with {weights.shape[0]} rows"
        )
    gap = ((features.float() - target.float()) ** 2).reshape(features.shape[0], -1).mean(dim=1)
    return (weights * gap).sum() / total
