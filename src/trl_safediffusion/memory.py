"""How many trained timesteps fit in one forward: `train_timesteps_per_forward="auto"`.

Stacking k timesteps into one forward/backward gives the same gradient as k forwards (the loss is a mean over them),
but keeps k times the activations alive until the backward. "auto" measures what one timestep's forward saves for its
backward (the bytes of every tensor autograd keeps, counted once per storage) and takes the largest stack whose
activations fit a memory budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

logger = logging.getLogger(__name__)

# the backward holds, next to the saved activations, the gradients of the activations it is working through
BACKWARD_HEADROOM = 1.5
# default budgets: this fraction of the accelerator's free memory, or of the host's available memory on CPU
DEFAULT_BUDGET_FRACTION = {"cuda": 0.7, "cpu": 0.4}


def _storage_key(t: torch.Tensor) -> tuple:
    return t.device.type, t.untyped_storage().data_ptr()


def saved_activation_bytes(forward: Callable[[], object], exclude: Iterable[torch.nn.Module] = ()) -> int:
    """Bytes of the tensors autograd saves for the backward while `forward()` runs (each storage counted once),
    leaving out the parameters and buffers of the `exclude` modules (weights are saved too, but exist anyway).

    The result of `forward` is dropped without a backward, so the call changes no gradient."""
    weights = {_storage_key(t) for m in exclude for t in (*m.parameters(), *m.buffers())}
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = _storage_key(t)
            if key not in weights:
                seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some wrappers): their own size
            seen[("tensor", id(t))] = t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return int(sum(seen.values()))


def memory_budget_bytes(device: torch.device | str, budget_gb: float = 0.0) -> int:
    """The activation memory budget: `budget_gb` GB when > 0, else a fraction of what is free now
    ([`DEFAULT_BUDGET_FRACTION`]: the device's free memory on CUDA, the host's available memory otherwise)."""
    if budget_gb > 0:
        return int(budget_gb * 1e9)
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * DEFAULT_BUDGET_FRACTION["cuda"])
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:  # psutil comes with accelerate; without it, assume 8 GB
        available = 8e9
    return int(available * DEFAULT_BUDGET_FRACTION["cpu"])


def timesteps_per_forward_for_budget(bytes_per_timestep: int, budget_bytes: int, num_timesteps: int) -> int:
    """The largest stack in [1, num_timesteps] whose activations (times [`BACKWARD_HEADROOM`]) fit `budget_bytes`."""
    if bytes_per_timestep <= 0:
        return num_timesteps
    fit = int(budget_bytes // (bytes_per_timestep * BACKWARD_HEADROOM))
    return max(1, min(num_timesteps, fit))
