"""`torchrun --standalone --nproc_per_node 2 -m trl_safediffusion.cli train` on CPU (gloo) is one job of two ranks."""

import os
import re
import shutil
import subprocess
import sys

import pytest

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
RANK_PREFIX = re.compile(r"^\[(?:default|rank)(\d+)\]:")


def rank_lines(output: str) -> dict[int, list[str]]:
    """Lines of `torchrun --tee 3` output by rank (the launcher prefixes each with `[default<rank>]:`)."""
    out: dict[int, list[str]] = {}
    for line in output.splitlines():
        match = RANK_PREFIX.match(line)
        if match:
            out.setdefault(int(match.group(1)), []).append(line[match.end():])
    return out


def scalar_tags(logdir: str) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for root, _, files in os.walk(logdir):
        if any(name.startswith("events.out.tfevents") for name in files):
            events = EventAccumulator(root)
            events.Reload()
            tags |= set(events.Tags()["scalars"])
    return tags


def run_two_ranks(tmp_path, launch: list[str]):
    """`torchrun` two CPU ranks of `launch` (a module or script and its leading arguments) on a tiny local model: one
    group of 2 images per process, so the job's two groups are the two prompts, one per rank; a rank that runs alone
    (world size 1) samples one of them only. Returns the combined output."""
    from trl_safediffusion.testing_utils import tiny_sd_pipeline

    model = tmp_path / "tiny-sd"
    tiny_sd_pipeline(seed=0).save_pretrained(str(model))
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,unsafe\na red circle,true\na blue square,false\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LOGLEVEL", None)
    cmd = [
        TORCHRUN, "--standalone", "--nproc_per_node", "2", "--tee", "3", *launch,
        "--pretrained_model", str(model), "--dataset", str(prompts), "--reward", "brightness",
        "--num_epochs", "1", "--sample_num_steps", "2", "--sample_batch_size", "2", "--sample_num_batches_per_epoch",
        "1", "--train_batch_size", "2", "--num_generations", "2", "--mixed_precision", "no", "--save_freq", "0",
        "--lora_rank", "2", "--log_images", "false", "--log_with", "tensorboard", "--logdir", str(tmp_path / "logs"),
        "--exp_name", "mp", "--output_dir", str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(TORCHRUN) is None, reason="torchrun not installed")
def test_torchrun_cli_train_on_cpu_is_one_job_of_two_ranks(tmp_path):
    pytest.importorskip("tensorboard")
    output = run_two_ranks(tmp_path, ["-m", "trl_safediffusion.cli", "train", "--log_level", "info"])
    lines = rank_lines(output)

    # both ranks saw a world of two, each with its own rank
    assert any("process 0 of 2" in line for line in lines[0]), output[-3000:]
    assert any("process 1 of 2" in line for line in lines[1]), output[-3000:]
    # the ranks sampled different prompts: the epoch's gathered rewards hold both labels
    tags = scalar_tags(str(tmp_path / "logs"))
    assert {"reward/unsafe=true/mean", "reward/unsafe=false/mean"} <= tags, tags
    # one process saved
    saved = {rank for rank, texts in lines.items() for text in texts if "train_config.yaml saved to" in text}
    assert saved == {0}, output[-3000:]
    assert os.path.isfile(tmp_path / "out" / "pytorch_lora_weights.safetensors")
    assert os.path.isfile(tmp_path / "out" / "train_config.yaml")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(TORCHRUN) is None, reason="torchrun not installed")
def test_torchrun_example_script_on_cpu_is_one_job_of_two_ranks(tmp_path):
    """`examples/safe_grpo_sd15.py` under torchrun: the ranks sample different prompts, and one of them saves."""
    pytest.importorskip("tensorboard")
    run_two_ranks(tmp_path, [os.path.join(os.path.dirname(__file__), "..", "examples", "safe_grpo_sd15.py")])
    # one epoch of two groups holds both prompts only if the two ranks formed one job of world size 2
    tags = scalar_tags(str(tmp_path / "logs"))
    assert {"reward/unsafe=true/mean", "reward/unsafe=false/mean"} <= tags, tags
    assert os.path.isfile(tmp_path / "out" / "pytorch_lora_weights.safetensors")
