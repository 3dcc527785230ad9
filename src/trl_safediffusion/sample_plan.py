"""What each process samples in an epoch: a prompt, its metadata and two seeds per sample.

Seeds come from [`mix_seed`] over (config seed, purpose, epoch, sample id), so a sample's trajectory does not depend
on the batch it is drawn in, the number of processes, or Python's hash randomisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# purposes mixed into the seeds (one per random stream)
DDPO_NOISE, STEP_NOISE, TRAIN_ORDER, DATASET_ORDER, GROUP_NOISE, GROUP_STEP_NOISE = 1, 2, 3, 4, 5, 6


@dataclass
class SamplePlan:
    """What one process samples in one epoch.

    Args:
        prompts (`list[str]`): one prompt per sample.
        metadata (`list`): one `prompt_metadata` per sample (what the reward function receives).
        noise_seeds (`list[int]`): initial-noise seed of each sample (equal within a GRPO group when noise is shared).
        step_seeds (`list[int]`): seed of each sample's step noise.
    """

    prompts: list[str]
    metadata: list[Any]
    noise_seeds: list[int]
    step_seeds: list[int]


def mix_seed(*parts: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix64), independent of Python's hash randomisation."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x = z ^ (z >> 31)
    return x & 0x7FFFFFFFFFFFFFFF


SDE_WINDOW = 7  # purpose of the random window's seed


def sde_window(mode: str, size: int, start: int, shift_every: int, epoch: int, trainable: int, seed: int):
    """`(start, stop)` of the epoch's stochastic window among the first `trainable` steps, or None for every step.

    Args:
        mode (`str`): `"all"`, `"fixed"` (from `start`), `"random"` (a start drawn from `(seed, epoch)`, the same on
            every process; Flow-GRPO-Fast) or `"sliding"` (one step later every `shift_every` epochs, then held at the
            last position; MixGRPO).
        size (`int`): steps in the window.
        trainable (`int`): how many steps, from the first, may be trained; the window lies within them.
    """
    if mode == "all":
        return None
    last = trainable - size  # the latest start that keeps the window trainable
    if last < 0 or (mode == "fixed" and start > last):
        raise ValueError(
            f"the stochastic window (sample_sde_window_size={size}, sample_sde_window_start={start}) must lie within "
            f"the {trainable} trainable steps; lower sample_sde_window_size or sample_sde_window_start"
        )
    if mode == "fixed":
        first = start
    elif mode == "random":
        first = mix_seed(seed, SDE_WINDOW, epoch) % (last + 1)
    else:
        first = min(epoch // shift_every, last)
    return first, first + size


def prefix_groups(prompts, noise_seeds) -> list[int]:
    """One id per sample; samples with the same prompt and initial-noise seed (a GRPO group) share an id."""
    ids: dict[tuple, int] = {}
    return [ids.setdefault((p, s), len(ids)) for p, s in zip(prompts, noise_seeds)]
