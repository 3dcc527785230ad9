"""Resume determinism, atomic checkpoints, failing rewards and unwritable output folders."""

import os
import stat

import pytest
import torch
from datasets import Dataset

from conftest import brightness_reward
from trl_safediffusion import (
    DefaultDDPOStableDiffusionPipeline,
    RewardFunctionError,
    SafeDDPOGRPOConfig,
    SafeDDPOGRPOTrainer,
)
from trl_safediffusion.ddpo_trainer import list_checkpoints, resolve_checkpoint
from trl_safediffusion.testing_utils import tiny_sd_pipeline

PROMPTS = Dataset.from_dict({"prompt": [f"object number {i}" for i in range(6)], "unsafe": [True, False] * 3})


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    GradientState._reset_state()


def make_trainer(logdir, reward=brightness_reward, use_lora=True, **kw):
    reset_accelerate()
    config = dict(
        num_epochs=4, sample_num_steps=4, sample_batch_size=4, sample_num_batches_per_epoch=1, train_batch_size=2,
        num_generations=2, mixed_precision="no", train_learning_rate=1e-3, train_clip_range=0.2, save_freq=1,
        logdir=str(logdir), exp_name="run", train_timesteps_per_forward=3, train_timestep_fraction=0.7,
    )
    config.update(kw)
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=use_lora)
    return SafeDDPOGRPOTrainer(SafeDDPOGRPOConfig(**config), reward, pipe, train_dataset=PROMPTS)


def trainable(trainer):
    return {n: p.detach().clone() for n, p in trainer.sd_pipeline.unet.named_parameters() if p.requires_grad}


def reward_logs(trainer):
    return [(r["epoch"], r["reward_mean"]) for r in trainer.log_history if "reward_mean" in r]


@pytest.mark.parametrize("use_lora", [True, False])
def test_resume_is_deterministic(tmp_path, use_lora):
    straight = make_trainer(tmp_path / "a", use_lora=use_lora)
    straight.train()
    params_straight, logs_straight = trainable(straight), reward_logs(straight)

    first = make_trainer(tmp_path / "b", use_lora=use_lora)
    first.train(epochs=2)
    second = make_trainer(tmp_path / "b2", use_lora=use_lora, resume_from=str(tmp_path / "b" / "run"))
    assert second.first_epoch == 2
    second.train()
    params_resumed = trainable(second)
    assert reward_logs(first) + reward_logs(second) == logs_straight  # identical logged rewards
    for name, value in params_straight.items():
        torch.testing.assert_close(params_resumed[name], value, rtol=0, atol=1e-6, msg=name)


def test_interrupted_save_leaves_previous_checkpoint_valid(tmp_path):
    trainer = make_trainer(tmp_path, num_epochs=1)
    trainer.train()  # writes checkpoint_0
    ckpt_dir = os.path.join(trainer.project_dir, "checkpoints")
    real_save_state = trainer.accelerator.save_state

    def crash_midway(output_dir=None, **kwargs):
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "optimizer.bin"), "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    trainer.accelerator.save_state = crash_midway
    with pytest.raises(OSError, match="disk full"):
        trainer.train(epochs=2)
    assert os.path.isdir(os.path.join(ckpt_dir, "checkpoint_1.tmp"))
    assert [e for e, _ in list_checkpoints(ckpt_dir)] == [0]
    assert resolve_checkpoint(trainer.project_dir).endswith("checkpoint_0")
    # the previous checkpoint still loads
    resumed = make_trainer(tmp_path / "r", resume_from=trainer.project_dir, num_epochs=2)
    assert resumed.first_epoch == 1
    trainer.accelerator.save_state = real_save_state
    resumed.train()
    names = sorted(os.listdir(os.path.join(resumed.project_dir, "checkpoints")))
    assert names == ["checkpoint_1"]  # the stale .tmp of the crashed save is cleaned up, nothing partial remains


def test_checkpoint_limit_prunes_only_complete_checkpoints(tmp_path):
    trainer = make_trainer(tmp_path, num_epochs=4, num_checkpoint_limit=2)
    os.makedirs(os.path.join(trainer.project_dir, "checkpoints", "checkpoint_99.tmp"))
    trainer.train()
    names = sorted(os.listdir(os.path.join(trainer.project_dir, "checkpoints")))
    assert names == ["checkpoint_2", "checkpoint_3"]


def test_reward_that_raises_names_epoch_and_batch_and_keeps_checkpoint(tmp_path):
    calls = {"n": 0}

    def flaky(images, prompts, metadata):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("scorer service unavailable")
        return brightness_reward(images, prompts, metadata)

    trainer = make_trainer(tmp_path, reward=flaky, num_epochs=4)
    with pytest.raises(RewardFunctionError, match=r"epoch 2, batch 0: RuntimeError: scorer service unavailable"):
        trainer.train()
    ckpts = list_checkpoints(os.path.join(trainer.project_dir, "checkpoints"))
    assert [e for e, _ in ckpts] == [0, 1]
    resumed = make_trainer(tmp_path / "again", resume_from=trainer.project_dir)
    assert resumed.first_epoch == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; the read-only check needs a normal user")
def test_unwritable_output_folder_fails_before_training_nonroot(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(ValueError, match="cannot write to the output folder"):
        make_trainer(ro)


def test_unwritable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should be")
    with pytest.raises(ValueError, match="cannot write to the output folder"):
        make_trainer(blocker)


def test_resume_from_bad_values(tmp_path):
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_checkpoint(str(tmp_path))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        resolve_checkpoint(str(tmp_path / "f.txt"))
    with pytest.raises(ValueError, match="neither an existing folder nor a Hub repo id"):
        resolve_checkpoint("no/such/local/path")


@pytest.mark.parametrize("where", ["file", "under_a_file", "unwritable"])
def test_unwritable_final_model_folder_fails_before_training(tmp_path, where):
    """`output_dir` (where the final model goes) is checked before the first epoch, not when training is over."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    if where == "unwritable" and os.geteuid() == 0 and not os.path.isdir("/proc/self"):
        pytest.skip("no folder that root cannot write to")
    output_dir = {"file": blocker, "under_a_file": blocker / "model",
                  "unwritable": tmp_path / "ro" / "model" if os.geteuid() else "/proc/self/trl-model"}[where]
    if where == "unwritable" and os.geteuid():
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(ValueError, match="output_dir") as info:
        make_trainer(tmp_path / "logs", output_dir=str(output_dir))
    assert "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "logs" / "run" / "checkpoints" / "checkpoint_0")  # nothing trained
    # a folder that does not exist yet is fine, and is not created before the model is saved
    trainer = make_trainer(tmp_path / "logs2", output_dir=str(tmp_path / "new" / "model"), num_epochs=1)
    assert not os.path.exists(tmp_path / "new")
    trainer.train()
    trainer.save_pretrained()
    assert os.path.isfile(tmp_path / "new" / "model" / "pytorch_lora_weights.safetensors")
