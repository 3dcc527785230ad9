"""Prompt conditioning: a mapping of per-sample tensors, the first dimension of each being the sample.

Stable Diffusion's is `{"prompt_embeds": (N, L, D)}`; SDXL adds pooled embeddings and time ids, a flow transformer
pooled projections. The trainers only index, concatenate and repeat it with these functions, so a model family's
conditioning fits without trainer changes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Conditioning = dict[str, torch.Tensor]


def as_conditioning(value) -> Conditioning:
    """`value` as a conditioning mapping: a mapping is copied, a bare tensor is Stable Diffusion's prompt embeddings
    (TRL's `prompt_embeds`)."""
    if isinstance(value, Mapping):
        return dict(value)
    if torch.is_tensor(value):
        return {"prompt_embeds": value}
    raise ValueError(f"conditioning must be a mapping of per-sample tensors or a tensor, got {type(value).__name__}")


def num_samples(cond: Mapping[str, torch.Tensor]) -> int:
    """The number of samples (rows) of `cond`; every tensor must have it."""
    sizes = {k: v.shape[0] for k, v in cond.items()}
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(f"conditioning tensors must share their first (sample) dimension, got {sizes}")
    return next(iter(sizes.values()))


def select(cond: Mapping[str, torch.Tensor], index) -> Conditioning:
    """The rows `index` (an int tensor, slice or list) of every tensor."""
    return {k: v[index] for k, v in cond.items()}


def concat(conds) -> Conditioning:
    """Row-wise concatenation of conditioning mappings with the same keys."""
    conds = list(conds)
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}


def repeat_rows(cond: Mapping[str, torch.Tensor], n: int) -> Conditioning:
    """A one-row conditioning repeated to `n` rows (a view: no copy)."""
    return {k: v[:1].expand(n, *v.shape[1:]) for k, v in cond.items()}


def to_device(cond: Mapping[str, torch.Tensor], device) -> Conditioning:
    """Every tensor moved to `device`."""
    return {k: v.to(device) for k, v in cond.items()}
