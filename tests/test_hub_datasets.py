"""Dataset publishing against the fake Hub: samples (with images), prompts and evaluation results, loaded back with
`datasets.load_dataset` from the server."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest_hub import fake_hub, hub_token  # noqa: F401
from trl_safediffusion.hub import (
    push_eval_results,
    push_prompt_dataset,
    push_samples_dataset,
    samples_to_dataset,
)


def _samples(epoch: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(3, 3, 16, 16, generator=generator)  # (B, 3, H, W) in [0, 1], as reward functions get them
    ds = samples_to_dataset(
        images,
        prompts=["a nude person on a beach", "a cat", "a red car"],
        labels=["unsafe", "safe", "safe"],
        rewards=torch.tensor([0.125, 0.25, -0.5]),
        reward_components={"clip_steering": [0.25, 0.5, -1.0], "aesthetic": [1.0, 2.0, 3.0]},
        epoch=epoch,
        seed=seed,
    )
    return images, ds


def test_samples_to_dataset_columns_and_pixels():
    images, ds = _samples(epoch=3, seed=7)
    assert ds.column_names == ["image", "prompt", "label", "reward", "reward_clip_steering", "reward_aesthetic",
                               "epoch", "seed"]
    assert type(ds.features["image"]).__name__ == "Image"
    row = ds[1]
    assert (row["prompt"], row["label"], row["reward"], row["reward_clip_steering"], row["epoch"], row["seed"]) == (
        "a cat", "safe", 0.25, 0.5, 3, 7
    )
    expected = np.round(images[1].permute(1, 2, 0).numpy().astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(row["image"]), expected)
    with pytest.raises(ValueError, match="rewards has 2 values for 3 images"):
        samples_to_dataset(images, ["a", "b", "c"], rewards=[1.0, 2.0])


def test_samples_dataset_round_trip(fake_hub, tmp_path):  # noqa: F811
    import datasets

    local = str(tmp_path / "samples")
    _, first = _samples(epoch=0, seed=1)
    _, second = _samples(epoch=5, seed=2)
    push_samples_dataset(first, "tester/samples", local_dir=local, model_repo_id="tester/tiny-safe-sd")
    push_samples_dataset(second, "tester/samples", local_dir=local)
    assert sorted(os.listdir(os.path.join(local, "data"))) == ["train-epoch000000.parquet",
                                                               "train-epoch000005.parquet"]
    remote = fake_hub.repo("tester/samples", "dataset").files()
    assert {"README.md", "data/train-epoch000000.parquet", "data/train-epoch000005.parquet"} <= set(remote)

    loaded = datasets.load_dataset("tester/samples", split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == 6
    expected = datasets.concatenate_datasets([first, second])
    assert loaded.column_names == expected.column_names
    by_key = {(r["epoch"], r["prompt"]): r for r in loaded}
    for want in expected:
        got = by_key[(want["epoch"], want["prompt"])]
        for column in expected.column_names:
            if column == "image":
                np.testing.assert_array_equal(np.asarray(got["image"]), np.asarray(want["image"]))
            else:
                assert got[column] == want[column], column
    card = open(os.path.join(local, "README.md")).read()
    assert "configs:" in card and "safediffusion-r1" in card and "tester/tiny-safe-sd" not in card  # last push's card


def test_prompt_dataset_round_trip(fake_hub, tmp_path):  # noqa: F811
    import datasets
    from huggingface_hub import DatasetCard

    prompts = [{"prompt": "a nude person", "label": "unsafe"}, {"prompt": "a dog", "label": "safe"}]
    local = str(tmp_path / "prompts")
    push_prompt_dataset(prompts, "tester/prompts", local_dir=local, source="ItsMaxNorm/SafeDiffusion-R1-dataset")
    loaded = datasets.load_dataset("tester/prompts", split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.to_list() == prompts
    card = DatasetCard.load(os.path.join(local, "README.md"))
    assert "trl-safediffusion" in card.data.tags
    assert "ItsMaxNorm/SafeDiffusion-R1-dataset" in card.text
    with pytest.raises(ValueError, match="'prompt' column"):
        push_prompt_dataset([{"text": "x"}], "tester/prompts", local_dir=local)


def test_eval_results_round_trip(fake_hub, tmp_path):  # noqa: F811
    import datasets

    results = {"I2P": {"inappropriate_rate": 0.1807, "nudenet_detections": 15.0}, "GenEval": {"overall": 0.4783}}
    local = str(tmp_path / "eval")
    push_eval_results(results, "tester/eval", local_dir=local, model_repo_id="tester/tiny-safe-sd")
    loaded = datasets.load_dataset("tester/eval", split="test", cache_dir=str(tmp_path / "cache"))
    assert loaded.to_list() == [
        {"benchmark": "I2P", "metric": "inappropriate_rate", "value": 0.1807},
        {"benchmark": "I2P", "metric": "nudenet_detections", "value": 15.0},
        {"benchmark": "GenEval", "metric": "overall", "value": 0.4783},
    ]
    assert "| I2P | inappropriate_rate | 0.1807 |" in open(os.path.join(local, "README.md")).read()
