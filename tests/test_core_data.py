"""Prompt dataset helpers, v-prediction pipelines and gradient checkpointing."""

import json

import pytest
import torch
from datasets import Dataset

from conftest import brightness_reward
from trl_safediffusion import (
    DefaultDDPOStableDiffusionPipeline,
    SafeDDPOGRPOConfig,
    SafeDDPOGRPOTrainer,
    load_prompt_dataset,
    mix_prompts,
)
from trl_safediffusion.testing_utils import tiny_sd_pipeline


def test_load_prompt_dataset_from_files_and_lists(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    assert load_prompt_dataset(str(tmp_path / "p.txt"))["prompt"] == ["a cat", "a dog"]
    (tmp_path / "p.csv").write_text("text,category\na cat,animal\na car,vehicle\n")
    ds = load_prompt_dataset(str(tmp_path / "p.csv"), prompt_column="text")
    assert ds["prompt"] == ["a cat", "a car"] and ds["category"] == ["animal", "vehicle"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "x", "unsafe": True}) + "\n" + json.dumps({"prompt": "y", "unsafe": False}) + "\n")
    ds = load_prompt_dataset(str(tmp_path / "p.jsonl"), label_column="unsafe")
    assert ds["unsafe"] == [True, False]
    ds = load_prompt_dataset(["u1", "u2"], label_column="unsafe", label=True)
    assert ds.column_names == ["prompt", "unsafe"] and ds["unsafe"] == [True, True]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"source": []}, "empty list"),
        ({"source": ["a", ""]}, "empty or not text"),
        ({"source": [{"text": "a"}]}, "prompt_column 'prompt' not in"),
        ({"source": ["a"], "label": True}, "label_column"),
        ({"source": "does/not/exist/file.txt"}, "neither an existing file"),
        ({"source": 3}, "source must be"),
    ],
)
def test_load_prompt_dataset_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_prompt_dataset(**kwargs)


def test_bad_jsonl_line_is_reported(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match="line 2"):
        load_prompt_dataset(str(tmp_path / "bad.jsonl"))


def test_mix_prompts_ratio_labels_and_seed():
    unsafe = [f"unsafe {i}" for i in range(10)]
    benign = [f"benign {i}" for i in range(30)]
    mixed = mix_prompts(unsafe, benign, unsafe_ratio=0.25, seed=1)
    # largest size that keeps the ratio without repeats: min(10 / 0.25, 30 / 0.75) = 40
    assert len(mixed) == 40 and sum(mixed["unsafe"]) == 10
    assert all(p.startswith("unsafe") == u for p, u in zip(mixed["prompt"], mixed["unsafe"]))
    assert mix_prompts(unsafe, benign, 0.25, seed=1)["prompt"] == mixed["prompt"]
    assert mix_prompts(unsafe, benign, 0.25, seed=2)["prompt"] != mixed["prompt"]
    bigger = mix_prompts(unsafe, benign, unsafe_ratio=0.5, num_prompts=60)
    assert sum(bigger["unsafe"]) == 30 and len(set(p for p, u in zip(bigger["prompt"], bigger["unsafe"]) if u)) == 10
    with pytest.raises(ValueError, match="unsafe_ratio"):
        mix_prompts(unsafe, benign, unsafe_ratio=1.5)


def _config(tmp_path, **kw):
    return SafeDDPOGRPOConfig(
        num_epochs=1, sample_num_steps=3, sample_batch_size=4, sample_num_batches_per_epoch=1, train_batch_size=2,
        num_generations=2, mixed_precision="no", save_freq=0, logdir=str(tmp_path), train_learning_rate=1e-3, **kw
    )


def test_v_prediction_pipeline_trains(tmp_path):
    sd = tiny_sd_pipeline(prediction_type="v_prediction")
    pipe = DefaultDDPOStableDiffusionPipeline(sd, use_lora=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if p.requires_grad}
    trainer = SafeDDPOGRPOTrainer(_config(tmp_path), brightness_reward, pipe,
                                  train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}))
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in pipe.unet.named_parameters() if p.requires_grad)


def test_gradient_checkpointing_gives_the_same_loss_gradient(tmp_path):
    grads = []
    for checkpointing in (False, True):
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
        pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=False)
        trainer = SafeDDPOGRPOTrainer(_config(tmp_path / str(checkpointing), gradient_checkpointing=checkpointing),
                                      brightness_reward, pipe, train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}))
        assert pipe.unet.is_gradient_checkpointing == checkpointing
        samples, _, _, plan = trainer._rollout_epoch(0)
        s = samples[0]
        embeds = torch.cat([trainer.neg_prompt_embed.expand_as(s["prompt_embeds"]), s["prompt_embeds"]])
        trainer.unet.train()
        loss, *_ = trainer.calculate_loss(s["latents"][:, 0], s["timesteps"][:, 0], s["next_latents"][:, 0],
                                          s["log_probs"][:, 0], torch.tensor([1.0, -1.0, 0.5, -0.5]), embeds)
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in trainer._trainable_params if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
