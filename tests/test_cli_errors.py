"""User mistakes in the CLI are one line on stderr with a non-zero exit code and no traceback: data and path errors,
models or datasets that are not available offline, a Hub resume that fails, YAML's unquoted `no`, the log level."""

import logging
import os
import re
import subprocess
import sys

import pytest

from conftest_hub import fake_hub, hub_token  # noqa: F401
from trl_safediffusion.cli import main

MISSING_MODEL = "nobody/not-a-model"


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("trl-safediffusion train: error: "), lines[0]
    return lines[0]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\na blue square\n")
    return str(path)


def train(*args) -> int:
    return main(["train", "--reward", "brightness", "--pretrained_model", MISSING_MODEL, *args])


def test_missing_prompt_file(tmp_path, capsys):
    assert train("--dataset", str(tmp_path / "missing.txt")) == 2
    line = error_line(capsys)
    assert "dataset" in line and "missing.txt does not exist" in line


def test_missing_prompt_file_with_a_folder_is_not_taken_for_a_hub_id(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train("--dataset", "data/prompts.jsonl") == 2  # one slash, like namespace/name
    line = error_line(capsys)
    assert "data/prompts.jsonl does not exist" in line and "Hub" not in line.split("does not exist")[0]


def test_dataset_without_the_prompt_column_names_prompt_column(tmp_path, capsys):
    path = tmp_path / "prompts.csv"
    path.write_text("text,unsafe\na red circle,true\n")
    assert train("--dataset", str(path)) == 2
    line = error_line(capsys)
    assert "'prompt'" in line and "text" in line and "--prompt_column" in line


def test_output_dir_that_is_a_file_is_refused_before_anything_loads(tmp_path, prompts, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    # the model does not exist: reaching it would be a different error, so the check comes first
    assert train("--dataset", prompts, "--output_dir", str(blocker), "--logdir", str(tmp_path / "logs")) == 2
    line = error_line(capsys)
    assert "output_dir" in line and "is a file" in line
    assert not os.path.exists(tmp_path / "logs")


def test_logdir_under_a_file_is_refused(tmp_path, prompts, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    assert train("--dataset", prompts, "--logdir", str(blocker / "logs")) == 2
    line = error_line(capsys)
    assert "logdir" in line and "cannot be created" in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write to read-only folders")
def test_output_dir_in_a_read_only_folder_is_refused(tmp_path, prompts, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert train("--dataset", prompts, "--logdir", str(tmp_path / "logs"), "--output_dir", str(locked / "out")) == 2
    finally:
        locked.chmod(0o755)
    line = error_line(capsys)
    assert "output_dir" in line and "cannot write" in line


def run_cli(args, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    env.pop("LOGLEVEL", None)
    return subprocess.run([sys.executable, "-m", "trl_safediffusion.cli", *args], capture_output=True, text=True,
                          timeout=240, env=env, cwd=str(tmp_path))


def test_model_not_available_offline(tmp_path, prompts):
    proc = run_cli(["train", "--reward", "brightness", "--dataset", prompts, "--pretrained_model", MISSING_MODEL,
                    "--logdir", str(tmp_path / "logs")], tmp_path)
    assert proc.returncode == 2
    # one line: the default console level is WARNING, so the INFO lines of the run's start do not show either
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("trl-safediffusion train: error: pretrained_model"), proc.stderr
    assert MISSING_MODEL in line and "HF_HUB_OFFLINE" in line


def test_model_folder_that_does_not_exist(tmp_path, prompts, capsys):
    assert main(["train", "--reward", "brightness", "--dataset", prompts, "--logdir", str(tmp_path / "logs"),
                 "--pretrained_model", "./models/my-sd"]) == 2
    line = error_line(capsys)
    assert "pretrained_model: the folder ./models/my-sd does not exist" in line


def test_dataset_not_available_offline(tmp_path):
    proc = run_cli(["train", "--reward", "brightness", "--dataset", "nobody/not-a-dataset", "--logdir",
                    str(tmp_path / "logs")], tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    line = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert line.startswith("trl-safediffusion train: error: dataset"), proc.stderr
    assert "nobody/not-a-dataset" in line and "HF_HUB_OFFLINE" in line


def test_hub_resume_that_fails(fake_hub, tmp_path, prompts, capsys):  # noqa: F811
    # checked before any model is loaded (the model does not exist)
    assert train("--dataset", prompts, "--logdir", str(tmp_path / "logs"), "--resume_from", "tester/no-such-run") == 2
    line = error_line(capsys)
    assert "resume_from='tester/no-such-run'" in line and "Could not download" in line


def test_hub_resume_from_a_repo_without_checkpoints(fake_hub, tmp_path, prompts, capsys):  # noqa: F811
    from huggingface_hub import HfApi

    HfApi().create_repo("tester/model-only")
    assert train("--dataset", prompts, "--logdir", str(tmp_path / "logs"), "--resume_from", "tester/model-only") == 2
    line = error_line(capsys)
    assert "resume_from='tester/model-only'" in line and "no complete checkpoint" in line


def test_unquoted_no_in_yaml_says_to_quote_it(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("mixed_precision: no\n")
    assert main(["train", "--config", str(recipe)]) == 2
    line = error_line(capsys)
    assert "mixed_precision" in line and 'mixed_precision: "no"' in line and "quote" in line


def test_log_level_defaults_to_warning_and_the_flag_raises_it(tmp_path, capsys):
    root = logging.getLogger()
    before = root.level
    try:
        assert train("--dataset", str(tmp_path / "missing.txt")) == 2
        assert root.level == logging.WARNING
        assert train("--dataset", str(tmp_path / "missing.txt"), "--log_level", "info") == 2
        assert root.level == logging.INFO
        capsys.readouterr()
        assert train("--log_level", "loud") == 2
        assert "log_level must be one of debug, info, warning, error, critical" in error_line(capsys)
    finally:
        root.setLevel(before)


def test_help_texts_never_refer_to_issue_numbers(capsys):
    from trl_safediffusion.cli import parse_eval_args, parse_train_args

    outputs = []
    for parse in (parse_train_args, parse_eval_args):
        with pytest.raises(SystemExit):
            parse(["--help"])
        outputs.append(capsys.readouterr().out)
    main(["--help"])
    outputs.append(capsys.readouterr().out)
    assert "--log_level" in outputs[0]
    for text in outputs:
        assert not re.search(r"\bissues?\b|#\d+", text, flags=re.IGNORECASE), re.findall(r".{40}issue.{40}", text)


def test_clip_model_not_available_offline(tmp_path, prompts):
    from trl_safediffusion.testing_utils import tiny_sd_pipeline

    model = tmp_path / "tiny-sd"
    tiny_sd_pipeline(seed=0).save_pretrained(str(model))
    # the default reward: open_clip ViT-H-14 weights, which are not on this machine
    proc = run_cli(["train", "--dataset", prompts, "--pretrained_model", str(model), "--logdir", str(tmp_path / "logs")],
                   tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    line = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert line.startswith("trl-safediffusion train: error: clip_model: cannot load 'ViT-H-14'"), proc.stderr
    assert "HF_HUB_OFFLINE" in line


def test_evaluate_model_not_available_offline(tmp_path, prompts):
    proc = run_cli(["evaluate", "--model", MISSING_MODEL, "--prompts", prompts, "--output_dir", str(tmp_path / "ev")],
                   tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("trl-safediffusion evaluate: error: model:") and "HF_HUB_OFFLINE" in lines[0]


def test_too_few_prompts_for_an_epoch_is_one_line_before_training(tmp_path, prompts, capsys):
    """Two prompts cannot fill an epoch of four groups: said when the trainer is built, not inside `train()`."""
    from trl_safediffusion.testing_utils import tiny_sd_pipeline

    model = tmp_path / "tiny-sd"
    tiny_sd_pipeline(seed=0).save_pretrained(str(model))
    code = main(["train", "--reward", "brightness", "--pretrained_model", str(model), "--dataset", prompts,
                 "--sample_num_steps", "2", "--sample_batch_size", "4", "--sample_num_batches_per_epoch", "2",
                 "--train_batch_size", "4", "--num_generations", "2", "--mixed_precision", "no",
                 "--logdir", str(tmp_path / "logs"), "--exp_name", "run"])
    assert code == 2
    err = capsys.readouterr().err  # diffusers' own loading bars come first: the model did load
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("trl-safediffusion train: error: "), err
    assert "train_dataset has 2 prompts but an epoch needs 4 distinct prompts" in lines[0]
    assert not os.path.exists(tmp_path / "logs" / "run" / "checkpoints" / "checkpoint_0")
