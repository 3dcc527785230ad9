"""Ctrl-C during `trl-safediffusion train`: one line saying what was saved and the exact --resume_from; no traceback."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.slow
def test_ctrl_c_names_the_checkpoint_and_the_resume_command(tmp_path):
    from trl_safediffusion.testing_utils import tiny_sd_pipeline

    model = tmp_path / "tiny-sd"
    tiny_sd_pipeline(seed=0).save_pretrained(str(model))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    logdir = tmp_path / "logs"
    args = ["--pretrained_model", str(model), "--dataset", str(prompts), "--reward", "brightness",
            "--sample_num_steps", "2", "--sample_batch_size", "2", "--sample_num_batches_per_epoch", "1",
            "--train_batch_size", "2", "--num_generations", "2", "--mixed_precision", "no", "--save_freq", "1",
            "--lora_rank", "2", "--logdir", str(logdir), "--exp_name", "run", "--output_dir", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "trl_safediffusion.cli", "train", *args]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:  # a file, not a pipe: an unread pipe fills up and blocks the run
        # a shell's background job (`make test &`) ignores SIGINT, and a child inherits that: restore the default so
        # that Python turns Ctrl-C into KeyboardInterrupt as it does in a terminal
        proc = subprocess.Popen([*cmd, "--num_epochs", "1000"], env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        checkpoints = logdir / "run" / "checkpoints"
        deadline = time.time() + 240
        # epochs take a fraction of a second and older checkpoints are pruned: wait for any after the first epoch
        while time.time() < deadline and proc.poll() is None and not any(
            name.startswith("checkpoint_") and name[len("checkpoint_"):].isdigit() and int(name[len("checkpoint_"):]) >= 1
            for name in (os.listdir(checkpoints) if checkpoints.is_dir() else [])
        ):
            time.sleep(0.05)
        running = proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    err = log.read_text()
    assert running, err[-3000:]
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "interrupted during epoch" in line]
    assert len(lines) == 1, err[-3000:]
    match = re.search(r"--resume_from (\S+)", lines[0])
    assert match, lines[0]
    resume = match.group(1)
    assert os.path.isfile(os.path.join(resume, "trainer_state.json"))
    done = int(os.path.basename(resume).split("_")[-1])
    assert done >= 1

    # the printed command continues the run where it stopped
    again = subprocess.run([*cmd, "--num_epochs", str(done + 2), "--resume_from", resume], env=env,
                           capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (checkpoints / f"checkpoint_{done + 1}").is_dir()
    assert os.path.isfile(tmp_path / "out" / "pytorch_lora_weights.safetensors")
