import json
import os

import pytest
import torch

from trl_safediffusion.evaluation import (
    CLIPMetrics,
    NudeNetMetric,
    evaluate,
    generate_images,
    image_seeds,
    load_eval_prompts,
)


@pytest.fixture(scope="module")
def pipe():
    from trl_safediffusion.testing_utils import tiny_sd_pipeline

    return tiny_sd_pipeline(seed=0)


def gen(pipe, **kwargs):
    args = dict(images_per_prompt=2, seed=5, batch_size=3, num_inference_steps=2, guidance_scale=3.0, progress=False)
    args.update(kwargs)
    return generate_images(pipe, ["a red circle", "a blue square"], **args)


def test_generation_is_seeded_and_batch_independent(pipe):
    a = gen(pipe)
    b = gen(pipe)
    assert a.images.shape == (4, 3, 16, 16)
    assert torch.equal(a.images, b.images)
    assert a.seeds == [5, 6, 7, 8] and a.prompt_indices == [0, 0, 1, 1] and a.image_indices == [0, 1, 0, 1]
    c = gen(pipe, batch_size=1)  # each image has its own noise: the batch size does not change it
    assert torch.allclose(a.images, c.images, atol=1e-4)
    d = gen(pipe, seed=6)
    assert torch.allclose(d.images[0], a.images[1], atol=1e-4)  # image seeds 6.. shift by one
    assert not torch.allclose(d.images[0], a.images[0], atol=1e-3)
    assert image_seeds(2, 3, prompt_seeds=[100, 7]) == [100, 101, 102, 7, 8, 9]


class FakeDetector:
    def detect(self, image):
        # "exposed" whenever the image's mean BGR red channel is above the median of a 16x16 tiny-SD image
        return [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9, "box": [0, 0, 2, 2]}] if image[..., 2].mean() > 127 else []


@pytest.mark.parametrize("table_format", ["jsonl", "parquet"])
def test_evaluate_writes_results_table_and_grid(pipe, tmp_path, table_format):
    from trl_safediffusion.rewards.clip_steering import CLIPSteeringReward, OpenCLIPBackend
    from trl_safediffusion.testing_utils import tiny_open_clip

    prompts_file = tmp_path / "i2p_like.jsonl"
    rows = [{"prompt": "a red circle", "categories": "sexual", "hard": 1, "sd_seed": 11},
            {"prompt": "a blue square", "categories": "hate, sexual", "hard": 0, "sd_seed": 3},
            {"prompt": "a green triangle", "categories": "violence", "hard": 1, "sd_seed": 5}]
    prompts_file.write_text("\n".join(json.dumps(r) for r in rows))
    prompt_set = load_eval_prompts(str(prompts_file), categories=["sexual"])
    assert [r["prompt"] for r in prompt_set.rows] == ["a red circle", "a blue square"]

    model, tokenizer, preprocess = tiny_open_clip(seed=0, name="tiny-clip-eval")
    reward = CLIPSteeringReward(OpenCLIPBackend(model, tokenizer, preprocess), anchors="toy-red")
    metrics = [NudeNetMetric(detector=FakeDetector()), CLIPMetrics(reward)]
    out = tmp_path / "eval"
    result = evaluate(pipe, prompt_set, str(out), metrics=metrics, images_per_prompt=2, seed=0, batch_size=3,
                      num_inference_steps=2, guidance_scale=3.0, seed_column="sd_seed", table_format=table_format,
                      model_name="tiny-sd", progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(result.results, default=str))
    for key in ("metrics", "protocol", "model", "prompt_set", "seeds", "versions", "num_images"):
        assert key in saved
    assert saved["num_images"] == 4
    assert saved["model"]["name"] == "tiny-sd"
    assert saved["prompt_set"]["filters"]["categories"] == ["sexual"]
    assert saved["seeds"]["seed_column"] == "sd_seed" and saved["seeds"]["first"] == 11
    assert saved["protocol"]["metrics"]["nudenet"]["threshold"] == 0.6
    assert saved["versions"]["torch"] == torch.__version__
    nn = saved["metrics"]["nudenet"]["i2p_5class"]
    flagged = [r["nudenet_i2p_5class_count"] > 0 for r in result.table]
    assert nn["total"] == sum(flagged) and nn["any_rate"] == pytest.approx(sum(flagged) / 4)
    assert saved["metrics"]["inappropriate"]["per_category"]["sexual"]["num_images"] == 4
    assert saved["metrics"]["inappropriate"]["per_category"]["hate"]["num_images"] == 2
    clip = saved["metrics"]["clip"]
    assert clip["steering_reward"] == pytest.approx(sum(r["steering_reward"] for r in result.table) / 4, abs=1e-5)

    assert [r["seed"] for r in result.table] == [11, 12, 3, 4]
    assert [r["prompt_index"] for r in result.table] == [0, 0, 1, 1]
    if table_format == "jsonl":
        table = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
        assert table[2]["prompt"] == "a blue square" and table[2]["categories"] == "hate, sexual"
        assert {"clip_score", "steering_reward", "nudenet_detections", "file"} <= set(table[0])
    else:
        import datasets

        table = datasets.Dataset.from_parquet(str(out / "images.parquet"))
        assert len(table) == 4
    assert os.path.isfile(out / "grid.png") and os.path.isfile(out / table[0]["file"])
    from PIL import Image

    first = torch.from_numpy(__import__("numpy").array(Image.open(out / "images" / "000000.png"))).float() / 255
    again = generate_images(pipe, ["a red circle"], seed=11, num_inference_steps=2, guidance_scale=3.0, progress=False)
    assert torch.allclose(first.permute(2, 0, 1), again.images[0], atol=1 / 255 + 1e-6)


def _labelled_prompts():
    # benign prompts first, then unsafe ones: the first images of the set are all benign
    rows = [{"prompt": f"a blue square number {i}", "unsafe": False} for i in range(6)]
    rows += [{"prompt": f"a red circle number {i}", "unsafe": True} for i in range(3)]
    return load_eval_prompts(rows)


@pytest.mark.parametrize("table_format", ["jsonl", "parquet"])
def test_evaluation_folder_loads_as_an_imagefolder_with_scores(pipe, tmp_path, table_format, monkeypatch):
    import datasets
    import numpy as np

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "eval"
    result = evaluate(pipe, _labelled_prompts(), str(out), metrics=[NudeNetMetric(detector=FakeDetector())],
                      images_per_prompt=1, seed=0, batch_size=4, num_inference_steps=2, guidance_scale=3.0,
                      table_format=table_format, progress=False)
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [line["file_name"] for line in lines] == [row["file"] for row in result.table]
    assert result.metadata_path == str(out / "metadata.jsonl")
    for loaded in (datasets.load_dataset(str(out), split="train"),
                   datasets.load_dataset("imagefolder", data_dir=str(out), split="train")):
        assert len(loaded) == len(result.table) == 9  # the images only: not grid.png
        assert {"image", "prompt", "seed", "unsafe", "nudenet_i2p_5class_count", "image_id"} <= set(loaded.column_names)
        by_id = {row["image_id"]: row for row in result.table}
        for row in loaded:
            expected = by_id[row["image_id"]]
            assert row["prompt"] == expected["prompt"] and row["seed"] == expected["seed"]
            assert row["nudenet_i2p_5class_count"] == expected["nudenet_i2p_5class_count"]
            saved = np.array(__import__("PIL.Image", fromlist=["Image"]).open(out / expected["file"]))
            assert np.array_equal(np.array(row["image"]), saved)


def test_evaluation_grid_mixes_benign_and_unsafe_prompts_and_explains_its_captions(pipe, tmp_path):
    from trl_safediffusion.evaluation.evaluate import grid_image_ids
    from trl_safediffusion.rewards.clip_steering import CLIPSteeringReward, OpenCLIPBackend
    from trl_safediffusion.testing_utils import tiny_open_clip

    prompt_set = _labelled_prompts()
    # equal shares of benign and unsafe prompts, spread over each group, alternating
    assert grid_image_ids(prompt_set.rows, 1, 4) == [0, 6, 3, 7]
    assert grid_image_ids(prompt_set.rows, 1, 8) == [0, 6, 1, 7, 2, 8, 3, 4]  # the unsafe group's unused share
    assert grid_image_ids(prompt_set.rows, 2, 4) == [0, 12, 6, 15]
    assert grid_image_ids([{"prompt": f"p{i}"} for i in range(8)], 1, 4) == [0, 2, 4, 6]  # no label: spread
    assert grid_image_ids(prompt_set.rows, 1, 100) == [0, 6, 1, 7, 2, 8, 3, 4, 5]
    assert grid_image_ids(prompt_set.rows, 1, 0) == []

    model, tokenizer, preprocess = tiny_open_clip(seed=0, name="tiny-clip-eval")
    reward = CLIPSteeringReward(OpenCLIPBackend(model, tokenizer, preprocess), anchors="toy-red")
    out = tmp_path / "eval"
    result = evaluate(pipe, prompt_set, str(out), metrics=[NudeNetMetric(detector=FakeDetector()), CLIPMetrics(reward)],
                      images_per_prompt=1, seed=0, batch_size=4, num_inference_steps=2, guidance_scale=3.0,
                      grid_size=4, progress=False)
    grid = json.loads((out / "results.json").read_text())["grid"]
    assert grid["image_ids"] == [0, 6, 3, 7]
    assert [c.split("]")[0] for c in grid["captions"]] == ["[benign prompt", "[unsafe prompt"] * 2
    assert grid["captions"][1].startswith("[unsafe prompt] a red circle number 0 | r=")
    legend = " ".join(grid["legend"])
    assert "4 evaluation images spread over the prompt set (benign prompt: 2, unsafe prompt: 2)" in legend
    assert "r = CLIP steering reward" in legend and "nn = NudeNet detections" in legend and "q16" not in legend
    assert result.grid_path == str(out / "grid.png")


def _toy_pipeline_shipped():
    from trl_safediffusion.toy.pipeline import TOY_PIPELINE_DIR

    return os.path.isfile(os.path.join(TOY_PIPELINE_DIR, "model_index.json"))


@pytest.mark.skipif(not _toy_pipeline_shipped(), reason="toy assets not shipped in this checkout")
def test_cli_resolves_the_toy_model_prompts_and_metric(tmp_path):
    # evaluation/ knows nothing of the toy world: `--model toy`, `--prompts toy:<set>` and `--metrics toy` are
    # resolved by the CLI
    from trl_safediffusion.cli import run_evaluate

    result = run_evaluate(["--model", "toy", "--prompts", "toy:eval_red", "--limit", "2", "--metrics", "toy",
                           "--num_inference_steps", "2", "--device", "cpu", "--output_dir", str(tmp_path / "ev")])
    assert result.results["prompt_set"]["name"] == "toy:eval_red" and result.results["model"]["name"] == "toy"
    assert result.results["metrics"]["toy"]["num_images"] == 2
    assert "red = the toy detector" in result.results["grid"]["legend"][1]
    assert all(" | red=" in caption for caption in result.results["grid"]["captions"])
