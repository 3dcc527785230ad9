"""Training-time publishing end to end, against the fake Hub: a run whose pushes fail keeps training and keeps its
local checkpoints; a run pushed with hub_strategy="checkpoint" resumes elsewhere from its repo id."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from datasets import Dataset

from conftest_hub import FAKE_TOKEN, fake_hub, hub_token  # noqa: F401
from trl_safediffusion import DefaultDDPOStableDiffusionPipeline, SafeDDPOGRPOConfig, SafeDDPOGRPOTrainer
from trl_safediffusion.hub import HubPushError
from trl_safediffusion.testing_utils import tiny_sd_pipeline

REPO = "tester/grpo-run"


def _brightness(images, prompts, metadata):
    return images.float().mean(dim=(1, 2, 3)), {}


def _trainer(logdir: str, **kw) -> SafeDDPOGRPOTrainer:
    config = SafeDDPOGRPOConfig(
        num_epochs=2, sample_num_steps=2, sample_batch_size=4, sample_num_batches_per_epoch=1, train_batch_size=4,
        num_generations=4, mixed_precision="no", train_learning_rate=1e-3, train_clip_range=0.2, save_freq=1,
        logdir=logdir, push_to_hub=True, hub_model_id=REPO, hub_strategy="checkpoint", hub_token=FAKE_TOKEN, **kw,
    )
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    prompts = Dataset.from_dict({"prompt": [f"a photo of object {i}" for i in range(4)]})
    return SafeDDPOGRPOTrainer(config, _brightness, pipe, train_dataset=prompts)


def _reset_accelerate():
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


def _all_text_under(folder: str) -> str:
    chunks = []
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                chunks.append(f.read().decode("latin-1"))
    return "\n".join(chunks)


def test_training_continues_when_the_hub_answers_500(fake_hub, tmp_path, caplog):  # noqa: F811
    fake_hub.fail_status = 500
    trainer = _trainer(str(tmp_path / "logs"))
    with caplog.at_level(logging.WARNING), pytest.raises(HubPushError) as info:
        trainer.train()  # checkpoint pushes warn; the final push raises after everything is saved
    assert REPO in str(info.value) and "HTTP 500" in str(info.value)
    assert [r["epoch"] for r in trainer.log_history if "reward_mean" in r] == [0, 1]
    assert caplog.text.count("retried at the next save") == 2
    checkpoints = os.path.join(trainer.project_dir, "checkpoints")
    assert sorted(os.listdir(checkpoints)) == ["checkpoint_0", "checkpoint_1"]
    for name in os.listdir(checkpoints):
        assert os.path.isfile(os.path.join(checkpoints, name, "trainer_state.json"))
    model = os.path.join(trainer.project_dir, "hub_model")
    assert {"README.md", "pytorch_lora_weights.safetensors"} <= set(os.listdir(model))
    assert FAKE_TOKEN not in _all_text_under(trainer.project_dir)
    assert FAKE_TOKEN not in caplog.text and FAKE_TOKEN not in str(info.value)


def test_resume_from_a_repo_id(fake_hub, tmp_path):  # noqa: F811
    trainer = _trainer(str(tmp_path / "run_a"))
    trainer.train()
    files = fake_hub.repo(REPO).files()
    assert "checkpoints/checkpoint_1/trainer_state.json" in files and "pytorch_lora_weights.safetensors" in files
    assert FAKE_TOKEN.encode() not in b"".join(files.values())
    trained = {n: p.detach().clone() for n, p in trainer.sd_pipeline.unet.named_parameters() if p.requires_grad}

    _reset_accelerate()
    resumed = _trainer(str(tmp_path / "run_b"), resume_from=REPO)
    assert resumed.first_epoch == 2 and resumed.global_step == trainer.global_step
    for name, param in resumed.sd_pipeline.unet.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, trained[name]), name
