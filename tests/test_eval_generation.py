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
    from trl_safediffusion.tiny import tiny_sd_pipeline

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
    from trl_safediffusion.rewards.tiny_clip import tiny_open_clip

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
