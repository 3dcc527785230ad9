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
