"""CombinedReward: weighted sum, per-component metadata, names and output validation."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from trl_safediffusion.rewards import CombinedReward


def brightness(images, prompts, prompt_metadata):
    return images.mean(dim=(1, 2, 3)), {"what": "brightness"}


def prompt_length(images, prompts, prompt_metadata):
    return np.array([len(p) for p in prompts], dtype=np.float64), None


class RedFraction:
    name = "red"

    def __call__(self, images, prompts, prompt_metadata):
        return [float(v) for v in images[:, 0].mean(dim=(1, 2))], {"channel": 0}


def test_weighted_sum_and_components():
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = ["a", "bb", "ccc", "dddd"]
    combined = CombinedReward([brightness, prompt_length, RedFraction()], weights=[2.0, -0.5, 1.5])
    total, meta = combined(images, prompts, [{}] * 4)

    b = images.mean(dim=(1, 2, 3))
    length = torch.tensor([1.0, 2.0, 3.0, 4.0])
    red = images[:, 0].mean(dim=(1, 2))
    torch.testing.assert_close(total, 2.0 * b - 0.5 * length + 1.5 * red)
    assert combined.names == ["brightness", "prompt_length", "red"]
    assert set(meta["components"]) == {"brightness", "prompt_length", "red"}
    torch.testing.assert_close(meta["components"]["prompt_length"], length)  # unweighted
    assert all(v.dtype == torch.float32 and v.shape == (4,) for v in meta["components"].values())
    assert meta["brightness"] == {"what": "brightness"} and meta["red"] == {"channel": 0}
    assert "prompt_length" not in meta  # its metadata was None
    assert meta["weights"] == {"brightness": 2.0, "prompt_length": -0.5, "red": 1.5}


def test_default_weights_and_deduplicated_names():
    combined = CombinedReward([brightness, brightness, functools.partial(brightness)])
    assert combined.weights == [1.0, 1.0, 1.0]
    assert combined.names == ["brightness", "brightness_2", "partial"]
    images = torch.full((2, 3, 4, 4), 0.25)
    total, _ = combined(images, ["x", "y"])
    torch.testing.assert_close(total, torch.full((2,), 0.75))


def test_wrong_component_output_names_the_component():
    def too_short(images, prompts, prompt_metadata):
        return torch.zeros(len(prompts) - 1), {}

    def no_metadata(images, prompts, prompt_metadata):
        return torch.zeros(len(prompts))

    def not_numbers(images, prompts, prompt_metadata):
        return ["high"] * len(prompts), {}

    images = torch.rand(3, 3, 4, 4)
    with pytest.raises(ValueError, match=r"reward component 'too_short' returned rewards of shape \(2,\); expected \(3,\)"):
        CombinedReward([brightness, too_short])(images, ["a", "b", "c"])
    with pytest.raises(ValueError, match="reward component 'no_metadata' must return a tuple"):
        CombinedReward([no_metadata])(images, ["a", "b", "c"])
    with pytest.raises(ValueError, match="reward component 'not_numbers' returned rewards of type list"):
        CombinedReward([not_numbers])(images, ["a", "b", "c"])


def test_constructor_validation():
    with pytest.raises(ValueError, match="weights has 1 entries but rewards has 2"):
        CombinedReward([brightness, prompt_length], weights=[1.0])
    with pytest.raises(ValueError, match="names has 1 entries but rewards has 2"):
        CombinedReward([brightness, prompt_length], names=["a"])
    with pytest.raises(ValueError, match="names must be unique"):
        CombinedReward([brightness, prompt_length], names=["a", "a"])
    with pytest.raises(ValueError, match=r"weights\[0\] must be a finite number"):
        CombinedReward([brightness], weights=[float("nan")])
    with pytest.raises(ValueError, match=r"rewards\[1\] must be callable"):
        CombinedReward([brightness, "clip"])
    with pytest.raises(ValueError, match="non-empty list"):
        CombinedReward([])
