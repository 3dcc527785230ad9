"""`trl-safediffusion demo` is `make demo` (examples/toy_demo.py): the same flags, defaults, output folder and summary."""

import os
import re
import subprocess
import sys

import pytest

from trl_safediffusion import cli
from trl_safediffusion.toy.demo import DEFAULT_OUTPUT_DIR, build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--epochs", "1", "--stage2_epochs", "0", "--eval_images", "4", "--eval_steps", "3", "--sample_batch_size", "8",
        "--sample_num_batches_per_epoch", "1", "--train_batch_size", "8", "--num_generations", "4",
        "--sample_num_steps", "4", "--timesteps_per_forward", "2"]


def _flags(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][\w-]*", help_text))


def _assets_present():
    from trl_safediffusion.toy.clip import TOY_CLIP_DIR
    from trl_safediffusion.toy.pipeline import TOY_PIPELINE_DIR

    return os.path.isfile(os.path.join(TOY_PIPELINE_DIR, "model_index.json")) and os.path.isdir(TOY_CLIP_DIR)


def test_cli_demo_help_lists_the_flags_of_make_demo(capsys):
    # what `make demo` runs
    script = subprocess.run([sys.executable, os.path.join(REPO, "examples", "toy_demo.py"), "--help"],
                            capture_output=True, text=True, timeout=300)
    assert script.returncode == 0, script.stderr
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--help"])
    assert exc.value.code == 0
    cli_help = capsys.readouterr().out
    assert cli_help.startswith("usage: trl-safediffusion demo")
    script_flags, cli_flags = _flags(script.stdout), _flags(cli_help)
    assert script_flags == cli_flags
    # every demo setting, under both spellings, and the output folder of `make demo`
    for flag in ("--output-dir", "--output_dir", "--epochs", "--eval-images", "--eval_images", "--structure-weight",
                 "--safe-anchors", "--seed", "--pipeline-path", "--clip-folder"):
        assert flag in cli_flags, flag
    assert DEFAULT_OUTPUT_DIR == "outputs/toy-demo" and "outputs/toy-demo" in cli_help
    assert build_parser().parse_args([]).output_dir == "outputs/toy-demo"


def test_cli_demo_bad_settings_and_output_dir_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--epochs", "2", "--stage2_epochs", "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "trl-safediffusion demo: error: stage2_epochs must be in [0, epochs=2], got 3" in err
    assert "Traceback" not in err
    # a trainer setting is checked before the minutes of the first evaluation
    with pytest.raises(SystemExit):
        cli.main(["demo", "--sample_batch_size", "16", "--train_batch_size", "32"])
    assert "train_batch_size" in capsys.readouterr().err
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--output_dir", str(a_file / "demo")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("trl-safediffusion demo: error: --output-dir") and str(a_file) in err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--pipeline_path", str(tmp_path / "missing")])
    assert "--pipeline-path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--use_lora", "maybe"])
    assert "--use_lora: expected true or false, got 'maybe'" in capsys.readouterr().err


@pytest.mark.skipif(not _assets_present(), reason="toy assets not shipped in this checkout")
def test_short_cli_demo_prints_the_summary_and_writes_to_the_given_folder(tmp_path, capsys):
    out = tmp_path / "cli-demo"
    assert cli.main(["demo", "--output_dir", str(out), "--device", "cpu", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "SafeDiffusion-R1 toy demo (" in printed and f"artefacts in {out})" in printed
    for key in ("unsafe_rate_red", "unsafe_rate_crimson", "unsafe_rate_scarlet", "benign_all_correct",
                "red_family_shape", "red_family_count"):
        assert re.search(rf"{key}\s+before\s+[\d.]+%\s+after\s+[\d.]+%", printed), key
    assert re.search(r"\[[x ]\] unsafe_rate_red_after <= 0.10", printed)
    for name in ("metrics.json", "before_after.png", "reward_curve.png", "alpha_sweep.png", "model/model_index.json"):
        assert (out / name).is_file(), name
    import json

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["settings"]["epochs"] == 1 and saved["settings"]["eval_images"] == 4
    assert saved["before"]["eval_red"]["n"] == 4


def test_demo_reads_trainer_fields_by_their_config_names_and_the_earlier_names():
    run, demo_args, config = build_parser().parse_args_and_config(
        ["--num-epochs", "4", "--stage2-epochs", "2", "--no-share-initial-noise", "--learning-rate", "1e-4",
         "--train_guidance_scale", "3", "--eval-images", "8", "--output_dir", "out"])
    assert config.num_epochs == 4 and config.share_initial_noise is False
    assert config.train_learning_rate == pytest.approx(1e-4) and config.sample_guidance_scale == 3.0
    assert demo_args.stage2_epochs == 2 and demo_args.eval_images == 8 and run.output_dir == "out"
    _, _, config = build_parser().parse_args_and_config(["--epochs", "3", "--num_epochs", "5"])  # one field: last wins
    assert config.num_epochs == 5
    _, demo_args, _ = build_parser().parse_args_and_config(["--use-lora", "--no_use_lora"])
    assert demo_args.use_lora is False


def test_demo_recipe_file_is_the_demo_default_and_takes_an_env_block(tmp_path, monkeypatch):
    from trl_safediffusion.toy.demo import DemoSettings

    recipe = os.path.join(REPO, "examples", "recipes", "toy_demo.yaml")
    assert build_parser().parse_args_and_config(["--config", recipe]) == build_parser().parse_args_and_config([])
    _, demo_args, config = build_parser().parse_args_and_config([])
    assert DemoSettings(config=config, **vars(demo_args)) == DemoSettings()
    monkeypatch.delenv("TRLSD_DEMO_TEST", raising=False)
    mine = tmp_path / "mine.yaml"
    mine.write_text("env:\n  TRLSD_DEMO_TEST: on-the-toy\nepochs: 6\nstage2_epochs: 3\n")
    _, demo_args, config = build_parser().parse_args_and_config(["--config", str(mine), "--stage2-epochs", "1"])
    assert os.environ["TRLSD_DEMO_TEST"] == "on-the-toy"
    assert config.num_epochs == 6 and demo_args.stage2_epochs == 1  # the flag overrides the file
    assert config.train_learning_rate == pytest.approx(3.5e-4)  # the demo's default where the file says nothing
    mine.write_text("eval_image: 8\n")
    with pytest.raises(SystemExit):
        cli.main(["demo", "--config", str(mine)])


def test_demo_config_is_the_one_the_demo_always_trained_with():
    """The figures of `make demo` depend on it: the config the demo built by hand before it read a SafeDDPOGRPOConfig."""
    from trl_safediffusion.grpo_config import SafeDDPOGRPOConfig
    from trl_safediffusion.toy.demo import DemoSettings, trainer_config

    before = SafeDDPOGRPOConfig(
        num_epochs=30, sample_num_steps=10, sample_guidance_scale=2.0, sample_batch_size=128,
        sample_num_batches_per_epoch=2, train_batch_size=128, num_generations=8, train_learning_rate=3.5e-4,
        train_clip_range=0.2, beta=0.3, kl_mode="branches", kl_unsafe_weight=0.0, structure_weight=0.04,
        scale_rewards="group", advantage_std="population", train_adv_clip_max=2.5, train_timesteps_per_forward=9,
        train_timestep_fraction=0.2, train_timestep_window=0.5, mixed_precision="no", save_freq=0, seed=0,
        logdir=os.path.join("out", "runs"), exp_name="toy-demo",
    )
    assert trainer_config(DemoSettings(), "out").to_dict() == before.to_dict()


def test_demo_settings_take_config_fields_and_the_earlier_names():
    from trl_safediffusion.toy.demo import DemoSettings

    settings = DemoSettings(epochs=2, learning_rate=1e-4, num_generations=4, eval_images=8)
    assert settings.config.num_epochs == 2 and settings.config.train_learning_rate == pytest.approx(1e-4)
    assert settings.epochs == 2 and settings.num_generations == 4 and settings.eval_images == 8
    assert settings.to_dict()["epochs"] == 2 and settings.to_dict()["learning_rate"] == pytest.approx(1e-4)
    with pytest.raises(TypeError, match="unknown setting 'epoch'; did you mean epochs"):
        DemoSettings(epoch=2)


def test_demo_errors_name_the_flag_as_typed(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--use-lora", "maybe"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["trl-safediffusion demo: error: --use-lora: expected true or false, got 'maybe'"]
    with pytest.raises(SystemExit):
        cli.main(["demo", "--eval-image", "8"])
    assert "unknown option --eval-image; did you mean --eval-images" in capsys.readouterr().err


def test_short_cli_demo_on_the_flow_model_writes_a_stock_sd3_pipeline(tmp_path, capsys):
    """`demo --model toy-flow`: the flow-matching toy world's defaults, the same artefacts, and the trained transformer
    saved as a StableDiffusion3Pipeline folder that stock diffusers loads without T5."""
    import json

    import torch
    from diffusers import StableDiffusion3Pipeline

    out = tmp_path / "flow-demo"
    # 6 sampling steps: the flow recipe's stochastic window of 5, then its tail
    assert cli.main(["demo", "--model", "toy-flow", "--output_dir", str(out), "--device", "cpu", *TINY,
                     "--sample_num_steps", "6"]) == 0
    printed = capsys.readouterr().out
    assert "SafeDiffusion-R1 toy-flow demo (" in printed
    for name in ("metrics.json", "before_after.png", "reward_curve.png", "alpha_sweep.png", "model/model_index.json",
                 "model/README.md"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["model"] == "toy-flow" and saved["config"]["sample_eta"] == 0.7
    assert saved["config"]["sample_sde_window"] == "fixed" and saved["settings"]["trainable_modules"] == "attn"
    assert saved["before"]["eval_red"]["n"] == 4 and 0.0 <= saved["after"]["eval_red"]["unsafe_rate"] <= 1.0
    pipe = StableDiffusion3Pipeline.from_pretrained(str(out / "model"), text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["two red circles"], num_inference_steps=3, guidance_scale=5.0, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_flow_demo_defaults_recipe_file_and_bad_model(capsys):
    from trl_safediffusion.toy.demo import FLOW_DEMO_DEFAULTS, FLOW_OUTPUT_DIR

    run, demo_args, config = build_parser(model="toy-flow").parse_args_and_config([])
    assert run.output_dir == FLOW_OUTPUT_DIR == "outputs/toy-flow-demo"
    assert config.sample_eta == FLOW_DEMO_DEFAULTS["sample_eta"] and demo_args.trainable_modules == "attn"
    recipe = os.path.join(REPO, "examples", "recipes", "toy_flow_demo.yaml")
    from_file = build_parser().parse_args_and_config(["--config", recipe])
    assert from_file[1:] == (demo_args, config) and from_file[0].model == "toy-flow"
    assert from_file[0].output_dir == FLOW_OUTPUT_DIR
    with pytest.raises(SystemExit):
        cli.main(["demo", "--model", "toy-unet"])
    assert "--model toy-unet: choose one of toy, toy-flow" in capsys.readouterr().err
