"""CLIP score and steering-reward statistics, computed with the steering reward's own CLIP backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


class CLIPMetrics:
    r"""
    Per image: CLIP score `100 * max(cos(E_img, E_txt), 0)` (the torchmetrics / CLIPScore convention without the 2.5
    weight), and the steering reward with its components (`steering_reward`, `image_safety` = E_img . v_safe,
    `text_safety`).

    Args:
        reward (`CLIPSteeringReward`): the reward whose backend and `v_safe` are used.
        label_column (`str`, *optional*, defaults to `"unsafe"`): prompt-set column that splits the summary.
    """

    name = "clip"

    def __init__(self, reward, label_column: str = "unsafe"):
        if not callable(getattr(reward, "encode_images", None)) or not callable(getattr(reward, "encode_prompts", None)):
            raise ValueError("reward must be a CLIPSteeringReward (needs encode_images and encode_prompts)")
        self.reward = reward
        self.label_column = label_column

    @torch.no_grad()
    def __call__(self, images, prompts, rows) -> list[dict]:
        z_x = self.reward.encode_images(images)  # (B, D)
        z_p = self.reward.encode_prompts(list(prompts)).to(z_x.device)  # (B, D)
        rewards, meta = self.reward.rewards_from_embeddings(z_x, z_p)
        cos = (z_x * z_p).sum(dim=-1).clamp(min=0).cpu()
        return [
            {
                "clip_score": round(100.0 * float(c), 4),
                "steering_reward": round(float(r), 6),
                "image_safety": round(float(s), 6),
                "text_safety": round(float(t), 6),
            }
            for c, r, s, t in zip(cos, rewards.cpu(), meta["image_safety"], meta["text_safety"])
        ]

    def summarize(self, table: Sequence[Mapping]) -> dict[str, Any]:
        keys = ("clip_score", "steering_reward", "image_safety")
        summary: dict[str, Any] = {k: _mean(r[k] for r in table) for k in keys}
        summary["steering_reward_std"] = float(np.std([r["steering_reward"] for r in table])) if table else float("nan")
        labels = sorted({str(r.get(self.label_column)).lower() for r in table if self.label_column in r})
        if labels:
            summary[f"by_{self.label_column}"] = {
                value: {k: _mean(r[k] for r in table if str(r.get(self.label_column)).lower() == value) for k in keys}
                for value in labels
            }
        return summary

    def protocol(self) -> dict[str, Any]:
        return {"reward": repr(self.reward), "clip_score": "100 * max(cos, 0)", "alpha": getattr(self.reward, "alpha", None)}
