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
