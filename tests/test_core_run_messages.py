"""What a user sees while training through the Python API: per-epoch summaries, progress bars, warnings, Ctrl-C."""

import logging
import os
import sys

import pytest
from datasets import Dataset

from conftest import brightness_reward
from trl_safediffusion import DDPOConfig, DefaultDDPOStableDiffusionPipeline, SafeDDPOGRPOConfig, SafeDDPOGRPOTrainer
from trl_safediffusion.testing_utils import tiny_sd_pipeline

PROMPTS = Dataset.from_dict({"prompt": ["a red cube", "a blue ball"], "unsafe": [True, False]})


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    GradientState._reset_state()


def _trainer(tmp_path, reward=brightness_reward, **kw):
    _reset_accelerate()
    config = dict(num_epochs=2, sample_num_steps=3, sample_batch_size=4, sample_num_batches_per_epoch=1,
                  train_batch_size=2, num_generations=2, mixed_precision="no", save_freq=1, logdir=str(tmp_path),
                  exp_name="run", train_learning_rate=1e-3)
    config.update(kw)
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    return SafeDDPOGRPOTrainer(SafeDDPOGRPOConfig(**config), reward, pipe, train_dataset=PROMPTS)


def test_one_summary_line_per_epoch_and_a_training_bar_without_tracker(tmp_path, capsys):
    trainer = _trainer(tmp_path)
    trainer.train()
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split(",")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    for line, epoch in zip(lines, (0, 1)):
        reward = next(r["reward_mean"] for r in trainer.log_history if "reward_mean" in r and r["epoch"] == epoch)
        assert f"reward {reward:.4g}" in line
        assert "unsafe=true" in line and "unsafe=false" in line and "loss " in line and "clipfrac " in line
    assert "Epoch 0: training" in err  # the gradient phase has its own bar (2 minibatches)


def test_no_summary_lines_on_stdout_with_a_tracker(tmp_path, capsys):
    trainer = _trainer(tmp_path, log_with="tensorboard", num_epochs=1)
    trainer.train()
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]


def test_all_nan_rewards_warn(tmp_path, caplog):
    def nan_reward(images, prompts, metadata):
        return [float("nan")] * len(images), {}

    trainer = _trainer(tmp_path, reward=nan_reward, num_epochs=1)
    with caplog.at_level(logging.WARNING, logger="trl_safediffusion"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("all 4 rewards are NaN or infinite" in m and "epoch 0" in m for m in warnings), warnings


def test_resuming_a_finished_run_warns(tmp_path, caplog):
    _trainer(tmp_path, num_epochs=2).train()
    resumed = _trainer(tmp_path / "again", num_epochs=2, resume_from=str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING, logger="trl_safediffusion"):
        resumed.train()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("already trained 2 epochs (num_epochs=2): nothing to train" in m for m in messages), messages


def test_ctrl_c_says_what_was_saved_and_how_to_resume(tmp_path, caplog):
    calls = []

    def interrupted_in_third_epoch(images, prompts, metadata):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return brightness_reward(images, prompts, metadata)

    trainer = _trainer(tmp_path, reward=interrupted_in_third_epoch, num_epochs=4)
    with caplog.at_level(logging.WARNING, logger="trl_safediffusion"), pytest.raises(KeyboardInterrupt):
        trainer.train()
    checkpoint = os.path.join(trainer.checkpoint_dir, "checkpoint_1")
    lines = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "during epoch 2" in lines[0] and f"--resume_from {checkpoint}" in lines[0]
    # and that command does continue the run
    resumed = _trainer(tmp_path / "b", num_epochs=4, resume_from=checkpoint)
    assert resumed.first_epoch == 2


def test_ctrl_c_before_any_checkpoint_says_nothing_was_saved(tmp_path, caplog):
    def interrupted(images, prompts, metadata):
        raise KeyboardInterrupt

    trainer = _trainer(tmp_path, reward=interrupted, save_freq=5)
    with caplog.at_level(logging.WARNING, logger="trl_safediffusion"), pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert any("no checkpoint saved (save_freq=5)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "argv0, expected",
    [
        ("/venv/bin/trl-safediffusion", "trl-safediffusion"),  # the console script
        (os.path.join("/site-packages", "trl_safediffusion", "cli.py"), "trl-safediffusion"),  # python -m ...cli
        ("examples/ddpo_aesthetic.py", "ddpo_aesthetic"),  # a user's script: TRL's default
    ],
)
def test_exp_name_does_not_depend_on_how_the_cli_is_launched(monkeypatch, argv0, expected):
    monkeypatch.setattr(sys, "argv", [argv0, "train"])
    assert DDPOConfig().exp_name == expected
