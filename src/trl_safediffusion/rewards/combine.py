"""Weighted sum of several reward callables (the trainer's `reward_weights`), each component kept in the metadata."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def reward_name(reward: Callable) -> str:
    """A reward callable's display name: its `name` attribute, else its function `__name__`, else its class name."""
    name = getattr(reward, "name", None)
    if isinstance(name, str) and name:
        return name
    name = getattr(reward, "__name__", None)
    if isinstance(name, str) and name and name != "<lambda>":
        return name
    return type(reward).__name__


def _dedupe(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            candidate = f"{name}_{seen[name]}"
            while candidate in seen:
                seen[name] += 1
                candidate = f"{name}_{seen[name]}"
            seen[candidate] = 1
            out.append(candidate)
        else:
            seen[name] = 1
            out.append(name)
    return out


def as_reward_tensor(rewards: Any, batch_size: int, name: str) -> torch.Tensor:
    """Convert a component's rewards (tensor, numpy array, list) to a float32 tensor (B,), or raise naming it."""
    if isinstance(rewards, torch.Tensor):
        tensor = rewards if rewards.is_floating_point() else rewards.float()
        tensor = tensor.to(torch.float32)
    else:
        try:
            array = np.asarray(rewards, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"reward component {name!r} returned rewards of type {type(rewards).__name__} that are not numbers; "
                f"return a tensor, numpy array or list of {batch_size} floats"
            ) from err
        tensor = torch.from_numpy(array)
    if tuple(tensor.shape) != (batch_size,):
        raise ValueError(
            f"reward component {name!r} returned rewards of shape {tuple(tensor.shape)}; expected ({batch_size},), "
            f"one reward per image"
        )
    return tensor


class CombinedReward:
    """A reward callable that is the weighted sum of several reward callables.

    Each component is called with the same `(images, prompts, prompt_metadata)` and must return `(rewards, metadata)`.

    Args:
        rewards (`list[Callable]`): reward callables with the trainer's contract.
        weights (`list[float]`, *optional*): one finite weight per reward; defaults to all 1.0.
        names (`list[str]`, *optional*): one unique name per reward; defaults to each callable's `name` attribute,
            function name or class name, deduplicated with `_2`, `_3`, ... suffixes.

    Returns (when called):
        `tuple[torch.Tensor, dict]`: the weighted sum (B,) float32 and metadata where `metadata["components"]` maps each
        name to its unweighted rewards (B,), `metadata["weights"]` maps names to weights, and each component's own
        metadata is kept under `metadata[name]`.
    """

    name = "combined"

    def __init__(
        self,
        rewards: Sequence[Callable],
        weights: Sequence[float] | None = None,
        names: Sequence[str] | None = None,
    ):
        if isinstance(rewards, (str, bytes)) or not isinstance(rewards, Sequence) or len(rewards) == 0:
            raise ValueError("rewards must be a non-empty list of reward callables")
        for i, reward in enumerate(rewards):
            if not callable(reward):
                raise ValueError(f"rewards[{i}] must be callable (images, prompts, prompt_metadata), got {reward!r}")
        if weights is None:
            weights = [1.0] * len(rewards)
        if len(weights) != len(rewards):
            raise ValueError(f"weights has {len(weights)} entries but rewards has {len(rewards)}; give one weight each")
        for i, weight in enumerate(weights):
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"weights[{i}] must be a finite number, got {weight!r}")
        if names is None:
            names = _dedupe([reward_name(r) for r in rewards])
        else:
            if len(names) != len(rewards):
                raise ValueError(f"names has {len(names)} entries but rewards has {len(rewards)}; give one name each")
            if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
                raise ValueError(f"names must be unique non-empty strings, got {list(names)}")
            if "components" in names or "weights" in names:
                raise ValueError("names 'components' and 'weights' are reserved for the combined metadata")
        self.rewards = list(rewards)
        self.weights = [float(w) for w in weights]
        self.names = list(names)

    def describe(self) -> dict:
        """Each component's description (its `describe()` when it has one) with its weight."""
        parts = []
        for name, fn, weight in zip(self.names, self.rewards, self.weights):
            describe = getattr(fn, "describe", None)
            parts.append({"name": name, "weight": weight, **(describe() if callable(describe) else {})})
        return {"type": "CombinedReward", "components": parts}

    def __call__(self, images, prompts, prompt_metadata=None) -> tuple[torch.Tensor, dict[str, Any]]:
        batch_size = len(prompts)
        components: dict[str, torch.Tensor] = {}
        metadata: dict[str, Any] = {}
        total = None
        for reward, weight, name in zip(self.rewards, self.weights, self.names):
            output = reward(images, prompts, prompt_metadata)
            if not isinstance(output, tuple) or len(output) != 2:
                raise ValueError(
                    f"reward component {name!r} must return a tuple (rewards, metadata), got {type(output).__name__}"
                )
            values, component_metadata = output
            values = as_reward_tensor(values, batch_size, name)
            components[name] = values
            if component_metadata is not None:
                metadata[name] = component_metadata
            weighted = weight * values
            total = weighted if total is None else total + weighted.to(total.device)
            logger.debug("reward component %s: mean %.4f (weight %.3g)", name, float(values.mean()), weight)
        metadata["components"] = components
        metadata["weights"] = dict(zip(self.names, self.weights))
        return total, metadata

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}*{w:g}" for n, w in zip(self.names, self.weights))
        return f"{type(self).__name__}({parts})"
