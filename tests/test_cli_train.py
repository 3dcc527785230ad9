import json
import os

import pytest
import yaml

from conftest_hub import fake_hub, hub_token  # noqa: F401


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from trl_safediffusion.testing_utils import tiny_sd_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline(seed=0).save_pretrained(str(folder))
    return str(folder)


def test_cli_train_end_to_end_with_steering_reward(tmp_path, tiny_model_dir):
    from trl_safediffusion.cli import main
    from trl_safediffusion.testing_utils import tiny_open_clip_config

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    clip_config = tmp_path / "tiny-cli-clip.json"
    clip_config.write_text(json.dumps(tiny_open_clip_config()))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "pretrained_model": tiny_model_dir,
        "dataset": str(prompts),
        "num_epochs": 1,
        "sample_num_steps": 2,
        "sample_batch_size": 2,
        "sample_num_batches_per_epoch": 1,
        "train_batch_size": 2,
        "num_generations": 2,
        "mixed_precision": "no",
        "save_freq": 0,
        "sample_guidance_scale": 2.0,
        "clip_backend": "open_clip",
        "clip_model": "tiny-cli-clip",
        "clip_pretrained": None,
        "clip_model_config": str(clip_config),
        "anchors": "toy-red",
    }))
    out = tmp_path / "out"
    code = main(["train", "--config", str(recipe), "--logdir", str(tmp_path / "logs"), "--output_dir", str(out),
                 "--lora_rank", "2", "--seed", "1", "--exp_name", "run"])
    assert code == 0
    assert os.path.isfile(out / "pytorch_lora_weights.safetensors")
    saved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert saved["lora_rank"] == 2 and saved["seed"] == 1 and saved["anchors"] == "toy-red"
    assert "hub_token" not in saved
    grids = os.listdir(tmp_path / "logs" / "run" / "samples")
    assert len(grids) == 1 and grids[0].endswith(".png")


def test_cli_train_needs_dataset(capsys):
    from trl_safediffusion.cli import main

    assert main(["train", "--reward", "brightness"]) == 2
    assert "dataset" in capsys.readouterr().err


def test_cli_failed_final_push_still_saves_and_says_how_to_push_again(fake_hub, tmp_path, tiny_model_dir,  # noqa: F811
                                                                      capsys):
    from trl_safediffusion.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    bad_token = "hf_thisTokenIsWrong987654321zyx"
    code = main(["train", "--pretrained_model", tiny_model_dir, "--dataset", str(prompts), "--reward", "brightness",
                 "--num_epochs", "1", "--sample_num_steps", "2", "--sample_batch_size", "2",
                 "--sample_num_batches_per_epoch", "1", "--train_batch_size", "2", "--num_generations", "2",
                 "--mixed_precision", "no", "--save_freq", "0", "--lora_rank", "2", "--log_images", "false",
                 "--logdir", str(tmp_path / "logs"), "--output_dir", str(out), "--push_to_hub", "true",
                 "--hub_model_id", "tester/cli-run", "--hub_token", bad_token])
    assert code == 2
    # everything a successful run writes locally is there
    assert os.path.isfile(out / "pytorch_lora_weights.safetensors")
    saved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert saved["hub_model_id"] == "tester/cli-run" and "hub_token" not in saved
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line.lower()]  # stderr also holds the progress bar
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("trl-safediffusion train: error: ")
    assert "tester/cli-run" in line and "HTTP 401" in line
    assert f"hf upload tester/cli-run {out} ." in line
    assert bad_token not in err
    assert "tester/cli-run" not in {repo_id for _, repo_id in fake_hub.repos}
