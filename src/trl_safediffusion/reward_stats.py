"""The reward stage of an epoch: calling the reward function under its contract, and the statistics logged.

Contract (TRL v0.23.1): `reward_function(images, prompts, prompt_metadata) -> (rewards, reward_metadata)`, `rewards`
anything `torch.as_tensor` takes, shape (B,). A reward made of several (`CombinedReward`) reports each part in
`reward_metadata["components"]`, and each is logged as `reward/<name>_mean`.
"""

from __future__ import annotations

import numpy as np
import torch


class RewardFunctionError(RuntimeError):
    """A reward function raised or returned something unusable; the message names the epoch and batch."""


def check_reward_output(result, batch_size: int, epoch: int, batch: int, device) -> tuple[torch.Tensor, object]:
    """`(rewards (B,) float32 on device, reward_metadata)` from what a reward function returned, or a `ValueError`
    naming the epoch and batch."""
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise ValueError(
            f"reward_function must return (rewards, reward_metadata); got {type(result).__name__} at epoch "
            f"{epoch}, batch {batch}"
        )
    rewards, meta = result
    try:
        rewards = torch.as_tensor(rewards)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"reward_function returned rewards of type {type(rewards).__name__} that torch.as_tensor cannot take "
            f"(epoch {epoch}, batch {batch})"
        ) from err
    if not (rewards.is_floating_point() or rewards.dtype in (torch.int32, torch.int64, torch.bool)):
        raise ValueError(f"reward_function returned rewards of dtype {rewards.dtype}; expected real numbers")
    rewards = rewards.reshape(-1) if rewards.ndim == 2 and rewards.shape[-1] == 1 else rewards
    if rewards.ndim != 1 or rewards.shape[0] != batch_size:
        raise ValueError(
            f"reward_function returned rewards of shape {tuple(rewards.shape)} for {batch_size} images; expected "
            f"({batch_size},) (epoch {epoch}, batch {batch})"
        )
    # bf16/fp16 rewards are upcast: TRL v0.23.1 failed to log them (numpy has no bf16).
    return rewards.to(device=device, dtype=torch.float32), meta


def call_reward(reward_fn, images, prompts, metadata, job, epoch: int, batch: int, device):
    """Run (or collect the future `job` of) `reward_fn` on one sampled batch and check its output."""
    try:
        # a future holds the (rewards, metadata) tuple; TRL v0.23.1 called .result() on the tensors
        result = job.result() if job is not None else reward_fn(images, prompts, metadata)
    except Exception as err:  # noqa: BLE001 - re-raised with the epoch and batch that failed
        raise RewardFunctionError(
            f"reward_function raised at epoch {epoch}, batch {batch}: {type(err).__name__}: {err}"
        ) from err
    return check_reward_output(result, len(prompts), epoch, batch, device)


def reward_components(reward_results) -> dict[str, torch.Tensor]:
    """This process's per-component rewards (`reward_metadata["components"]`), concatenated over batches; empty
    unless every batch reports the same components."""
    names = None
    for _, meta in reward_results:
        comps = meta.get("components") if isinstance(meta, dict) else None
        if not isinstance(comps, dict):
            return {}
        names = list(comps) if names is None else names
    if not names:
        return {}
    return {
        name: torch.cat(
            [torch.as_tensor(meta["components"][name], dtype=torch.float32).reshape(-1) for _, meta in reward_results]
        )
        for name in names
    }


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def reward_log(epoch: int, rewards: np.ndarray, components: dict[str, np.ndarray], guidance_scale: float) -> dict:
    """The reward statistics every trainer logs: mean, std and non-finite count of all rewards, the mean of each
    component, and the rollouts' guidance."""
    finite = np.isfinite(rewards)
    r = rewards[finite]
    log = {
        "epoch": epoch,
        "reward_mean": float(r.mean()) if r.size else float("nan"),
        "reward_std": float(r.std()) if r.size else float("nan"),
        "reward_nonfinite": int((~finite).sum()),
        "sample_guidance_scale": float(guidance_scale),
    }
    for name, values in components.items():
        log[f"reward/{name}_mean"] = _finite_mean(values)
    return log


def label_split_log(rewards: np.ndarray, components: dict[str, np.ndarray], metadata, label: str) -> dict:
    """`reward/<label>=<value>/mean` and `/std` of the rewards, and `reward/<component>/<label>=<value>/mean`, for each
    value of the metadata's `label` (empty when the metadata has no such key)."""
    if not (metadata and isinstance(metadata[0], dict) and label in metadata[0]):
        return {}
    log = {}
    labels = np.asarray([str(m.get(label)).lower() for m in metadata])
    series = {"": rewards, **{f"{name}/": values for name, values in components.items()}}
    for value in sorted(set(labels.tolist())):
        for prefix, values in series.items():
            mask = (labels == value) & np.isfinite(values)
            if mask.any():
                log[f"reward/{prefix}{label}={value}/mean"] = float(values[mask].mean())
                if not prefix:
                    log[f"reward/{label}={value}/std"] = float(values[mask].std())
    return log


def epoch_summary(records: list[dict], epoch: int, epochs: int, loss_terms) -> str:
    """One line on `epoch` from its log records: reward mean and std (by label where logged), the mean of each of
    `loss_terms` (`train/<name>`)."""
    parts = [f"epoch {epoch + 1}/{epochs}"]
    for r in records:
        if "reward_mean" in r:
            parts.append(f"reward {r['reward_mean']:.4g} +- {r['reward_std']:.3g}")
            parts.extend(f"{k[len('reward/'):-len('/mean')]} {v:.4g}" for k, v in r.items()
                         if k.startswith("reward/") and k.endswith("/mean") and k.count("/") == 2)
    for name in loss_terms:
        values = [r[f"train/{name}"] for r in records if f"train/{name}" in r]
        if values:
            parts.append(f"{name} {sum(values) / len(values):.3g}")
    return ", ".join(parts)
