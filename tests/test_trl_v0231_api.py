"""TRL v0.23.1's own DDPO trainer tests (tests/test_ddpo_trainer.py there), on our tiny local model.

TRL's tests call `trainer.loss`, `trainer._generate_samples(iterations, batch_size)` and
`trainer.calculate_loss(latents, timesteps, next_latents, log_probs, advantage, prompt_embeds)`, unpacking three
values; code written against TRL does the same, so the shapes of those calls are kept here.
"""

import pytest
import torch

from trl_safediffusion import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline
from trl_safediffusion.testing_utils import tiny_sd_pipeline


def _scorer(images, prompts, metadata):
    return torch.randn(len(images)) * 3.0, {}


def _prompt():
    return "cabbages", {}


def _trainer(tmp_path, use_lora):
    config = DDPOConfig(
        output_dir=str(tmp_path / "out"), logdir=str(tmp_path / "logs"), num_epochs=2,
        train_gradient_accumulation_steps=1, per_prompt_stat_tracking_buffer_size=32,
        sample_num_batches_per_epoch=2, sample_batch_size=2, sample_num_steps=3, mixed_precision=None,
        save_freq=1000000,
    )
    pipeline = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(seed=0), use_lora=use_lora)
    return DDPOTrainer(config, _scorer, _prompt, pipeline)


@pytest.mark.parametrize("use_lora", [False, True])
def test_trl_loss(tmp_path, use_lora):
    trainer = _trainer(tmp_path, use_lora)
    loss = trainer.loss(torch.tensor([-1.0]), 0.0001, torch.tensor([1.0]))
    assert loss.item() == 1.0


@pytest.mark.parametrize("use_lora", [False, True])
def test_trl_generate_samples(tmp_path, use_lora):
    trainer = _trainer(tmp_path, use_lora)
    samples, output_pairs = trainer._generate_samples(1, 2)
    assert len(samples) == 1
    assert len(output_pairs) == 1
    assert len(output_pairs[0][0]) == 2
    samples, output_pairs = trainer._generate_samples(3, 2)
    assert len(samples) == 3 and [len(p[1]) for p in output_pairs] == [2, 2, 2]
    assert samples[0]["latents"].shape[:2] == (2, 3)  # (B, T, C, h, w)


@pytest.mark.parametrize("use_lora", [False, True])
def test_trl_calculate_loss_returns_three_values(tmp_path, use_lora):
    trainer = _trainer(tmp_path, use_lora)
    samples, _ = trainer._generate_samples(1, 2)
    sample = samples[0]
    latents = sample["latents"][0, 0].unsqueeze(0)
    next_latents = sample["next_latents"][0, 0].unsqueeze(0)
    log_probs = sample["log_probs"][0, 0].unsqueeze(0)
    timesteps = sample["timesteps"][0, 0].unsqueeze(0)
    prompt_embeds = sample["prompt_embeds"]
    advantage = torch.tensor([1.0], device=prompt_embeds.device)
    assert latents.shape == next_latents.shape == (1, 4, 8, 8)
    assert log_probs.shape == timesteps.shape == (1,)
    assert prompt_embeds.shape[0] == 2

    result = trainer.calculate_loss(latents, timesteps, next_latents, log_probs, advantage, prompt_embeds)
    assert len(result) == 3
    loss, approx_kl, clipfrac = result
    assert torch.isfinite(loss.cpu())
    # the same step scored by the named terms: identical loss; DDPO has no extra terms (SafeDDPOGRPOTrainer adds its
    # KL and structure anchor there: tests/test_core_kl.py, tests/test_core_structure.py)
    terms = trainer.compute_loss_terms(latents, timesteps, next_latents, log_probs, advantage, prompt_embeds)
    assert set(terms) == {"loss", "approx_kl", "clipfrac"}
    torch.testing.assert_close(terms["loss"], loss)
    torch.testing.assert_close(terms["approx_kl"], approx_kl)
    # with the embeddings it was sampled with ([negative; prompt]), the unchanged policy gives ratio 1: the loss is
    # -advantage and nothing is clipped
    embeds = trainer._training_embeds(prompt_embeds[:1])
    loss, approx_kl, clipfrac = trainer.calculate_loss(latents, timesteps, next_latents, log_probs, advantage, embeds)
    assert float(loss.detach()) == pytest.approx(-1.0, abs=1e-4)
    assert float(clipfrac) == 0.0
