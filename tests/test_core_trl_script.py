"""A script written for TRL v0.23.1's DDPO runs with only its import line changed."""

import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "trl_v0231_ddpo_example.py")


def test_trl_v0231_example_runs_unchanged(tmp_path):
    from trl_safediffusion.testing_utils import tiny_sd_pipeline

    model = tmp_path / "tiny-sd"
    tiny_sd_pipeline(seed=0).save_pretrained(model)
    with open(SCRIPT) as f:
        text = f.read()
    assert "from trl_safediffusion import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline" in text
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, SCRIPT, "--pretrained_model", str(model), "--num_epochs", "2", "--sample_num_steps", "3",
        "--sample_batch_size", "2", "--train_batch_size", "1", "--sample_num_batches_per_epoch", "1",
        "--per_prompt_stat_tracking", "True", "--per_prompt_stat_tracking_min_count", "1",
        "--mixed_precision", "no", "--log_with", "tensorboard", "--output_dir", str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "out" / "README.md").is_file()
    # checkpoints every epoch (save_freq=1) under the script's project_dir, and tensorboard events with images
    assert sorted(os.listdir(tmp_path / "save" / "checkpoints")) == ["checkpoint_0", "checkpoint_1"]
    events = [f for _, _, files in os.walk(tmp_path / "logs") for f in files if f.startswith("events.out")]
    assert events
