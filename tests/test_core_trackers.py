"""Trackers across several `train()` calls (a guidance curriculum trains in stages): real W&B (offline) and TensorBoard."""

import glob

import pytest

from conftest import brightness_reward
from test_core_training import grpo_config, prompt_dataset
from trl_safediffusion import DefaultDDPOStableDiffusionPipeline, SafeDDPOGRPOTrainer
from trl_safediffusion.testing_utils import tiny_sd_pipeline


def _trainer(tmp_path, log_with):
    config = grpo_config(tmp_path, log_with=log_with, num_epochs=2)
    pipeline = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(seed=0), use_lora=True)
    return SafeDDPOGRPOTrainer(config, brightness_reward, pipeline, train_dataset=prompt_dataset())


def test_wandb_run_stays_open_between_train_calls_until_end_training(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = _trainer(tmp_path, "wandb")
    run = trainer.accelerator.get_tracker("wandb", unwrap=True)
    trainer.train(1)
    assert run.summary["epoch"] == 0
    # the second stage logs into the same run (train() used to finish it, and W&B then raised UsageError)
    trainer.train(2)
    assert run.summary["epoch"] == 1
    assert run.summary["sample_guidance_scale"] == pytest.approx(trainer.config.sample_guidance_scale)
    trainer.end_training()
    with pytest.raises(wandb.errors.UsageError):
        run.log({"after": 1.0})
    trainer.end_training()  # a second call is harmless
    assert trainer.accelerator.trackers == []


def _scalar_epochs(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = []
    for path in sorted(glob.glob(f"{logdir}/**/events.out.tfevents.*", recursive=True)):
        acc = EventAccumulator(path)
        acc.Reload()
        if "reward_mean" in acc.Tags()["scalars"]:
            epochs += [e.value for e in acc.Scalars("epoch")]
    return sorted(set(epochs))


def test_tensorboard_events_are_written_by_each_train_call(tmp_path):
    pytest.importorskip("tensorboard")
    trainer = _trainer(tmp_path, "tensorboard")
    trainer.train(1)
    # flushed, not closed: the first stage's scalars are on disk before the second stage starts
    assert _scalar_epochs(tmp_path / "logs") == [0.0]
    trainer.train(2)
    trainer.end_training()
    assert _scalar_epochs(tmp_path / "logs") == [0.0, 1.0]
