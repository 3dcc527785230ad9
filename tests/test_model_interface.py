"""The model interface: a model family written from scratch against `DDPOStableDiffusionPipeline` trains.

`TinyFamily` is not Stable Diffusion: its denoiser is a small conv net (not a UNet, no `.device`), its conditioning has
two per-sample tensors (token states and a pooled vector, as SDXL or a flow transformer have), and it implements only
what the interface marks as required. The components the interface keeps for TRL (`vae`, `tokenizer`, `scheduler`,
`text_encoder`, `scheduler_step`, ...) raise if called, so any call from a trainer outside the interface fails here.
"""

import os

import pytest
import torch
from datasets import Dataset
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file

from conftest import brightness_reward
from trl_safediffusion import SafeDDPOGRPOConfig, SafeDDPOGRPOTrainer
from trl_safediffusion.pipelines import DDPOStableDiffusionPipeline, StepDistribution
from trl_safediffusion.schedulers import ddim_step_with_logprob
from trl_safediffusion.schedulers.ddim_with_logprob import ddim_step_std

DIM, CHANNELS, SIZE = 16, 3, 8


class TinyDenoiser(torch.nn.Module):
    """eps(x_t, t, tokens, pooled): two convolutions modulated by the conditioning and the timestep."""

    def __init__(self):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(CHANNELS, 16, 3, padding=1)
        self.film = torch.nn.Linear(2 * DIM + 1, 32)
        self.conv_out = torch.nn.Conv2d(16, CHANNELS, 3, padding=1)

    def forward(self, x, t, tokens, pooled):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
        t = t.expand(x.shape[0]) if t.numel() == 1 else t
        context = torch.cat([tokens.mean(dim=1), pooled, (t / 1000.0)[:, None]], dim=1)
        scale, shift = self.film(context).chunk(2, dim=1)
        h = torch.nn.functional.silu(self.conv_in(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        return self.conv_out(h)


class TinyFamily(DDPOStableDiffusionPipeline):
    """A model family implementing only the interface's required methods."""

    def __init__(self):
        torch.manual_seed(0)
        self.denoiser = TinyDenoiser()
        self.words = torch.nn.Embedding(64, DIM).requires_grad_(False)  # the frozen "text encoder"
        self.ddim = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False,
                                  set_alpha_to_one=False, steps_offset=1)
        self.pretrained_model_name = "tiny-family"

    @property
    def model(self):
        return self.denoiser

    def frozen_modules(self):
        return [self.words]

    def encode_conditioning(self, prompts):
        ids = torch.tensor([[sum(map(ord, w)) % 64 for w in (p.split() or [""])[:4]] + [0] * (4 - len(p.split()[:4]))
                            for p in prompts])
        device = self.words.weight.device
        tokens = self.words(ids.to(device))  # (N, 4, DIM)
        return {"tokens": tokens, "pooled": tokens.sum(dim=1)}  # (N, 4, DIM), (N, DIM)

    def set_timesteps(self, num_inference_steps, device=None):
        self.ddim.set_timesteps(num_inference_steps, device=device)
        return self.ddim.timesteps

    def latent_shape(self, height=None, width=None):
        return (CHANNELS, SIZE, SIZE)

    def step_std(self, num_inference_steps, eta):
        return ddim_step_std(self.ddim, num_inference_steps, eta)

    def _eps(self, model, latents, t, cond):
        return model(latents, t, cond["tokens"], cond["pooled"])

    def step_distribution(self, model, latents, timesteps, conditioning, negative_conditioning=None,
                          guidance_scale=1.0, eta=1.0, next_latents=None, generator=None, branches=False,
                          autocast=None):
        cfg = negative_conditioning is not None and guidance_scale > 1.0
        if cfg:
            uncond, cond = self._eps(model, latents, timesteps, negative_conditioning), self._eps(
                model, latents, timesteps, conditioning)
            pred = uncond + guidance_scale * (cond - uncond)
        else:
            pred = self._eps(model, latents, timesteps, conditioning)
        out = ddim_step_with_logprob(self.ddim, pred, timesteps, latents, eta=eta, prev_sample=next_latents,
                                     generator=generator)
        parts = None
        if branches and cfg:
            parts = tuple(StepDistribution.from_scheduler_output(
                ddim_step_with_logprob(self.ddim, b, timesteps, latents, eta=eta, prev_sample=out.latents))
                for b in (uncond, cond))
        return StepDistribution.from_scheduler_output(out, parts)

    def decode_latents(self, latents):
        return torch.sigmoid(torch.nn.functional.interpolate(latents.float(), scale_factor=2))

    def save_checkpoint(self, models, weights, output_dir):
        save_file(models[0].state_dict(), os.path.join(output_dir, "denoiser.safetensors"))
        weights.pop()

    def load_checkpoint(self, models, input_dir):
        models.pop().load_state_dict(load_file(os.path.join(input_dir, "denoiser.safetensors")))


def _config(tmp_path, **kw):
    base = dict(num_epochs=2, sample_num_steps=4, sample_batch_size=4, sample_num_batches_per_epoch=2,
                train_batch_size=4, num_generations=4, mixed_precision="no", train_learning_rate=3e-3,
                train_clip_range=0.2, save_freq=0, logdir=str(tmp_path / "logs"), sample_guidance_scale=3.0,
                beta=0.1, kl_mode="branches")
    base.update(kw)
    return SafeDDPOGRPOConfig(**base)


PROMPTS = Dataset.from_dict({"prompt": [f"a red shape number {i}" for i in range(4)]})


def test_custom_family_trains_through_the_interface(tmp_path):
    family = TinyFamily()
    before = {k: v.clone() for k, v in family.denoiser.state_dict().items()}
    words = family.words.weight.clone()
    trainer = SafeDDPOGRPOTrainer(_config(tmp_path), brightness_reward, family, train_dataset=PROMPTS)
    assert trainer.ref_unet is not None  # a full fine-tune with a KL: a frozen copy of the custom model

    # the stored log-probabilities are the interface's step distribution: the untrained policy has ratio 1
    batches, _, _, _ = trainer._rollout_epoch(0)
    s = batches[0]
    assert set(s) >= {"tokens", "pooled", "timesteps", "latents", "next_latents", "log_probs"}
    n = s["timesteps"].shape[0]
    terms = trainer.compute_loss_terms(s["latents"][:, 1], s["timesteps"][:, 1], s["next_latents"][:, 1],
                                       s["log_probs"][:, 1], torch.ones(n), {"tokens": s["tokens"],
                                                                             "pooled": s["pooled"]})
    assert float(terms["loss"].detach()) == pytest.approx(-1.0, abs=1e-5)  # -A * ratio, the KL to itself is 0
    assert float(terms["kl"].detach()) == pytest.approx(0.0, abs=1e-12)

    trainer.train()
    after = family.denoiser.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(family.words.weight, words)
    assert all(torch.equal(v, before[k]) for k, v in trainer.ref_unet.state_dict().items())
    kls = [r["train/kl"] for r in trainer.log_history if "train/kl" in r]
    assert kls and kls[-1] > 0  # the policy moved away from the reference


def test_custom_family_checkpoint_resume(tmp_path):
    trainer = SafeDDPOGRPOTrainer(_config(tmp_path, save_freq=1, beta=0.0), brightness_reward, TinyFamily(),
                                  train_dataset=PROMPTS)
    trainer.train()
    trained = {k: v.clone() for k, v in trainer.sd_pipeline.denoiser.state_dict().items()}
    resumed = SafeDDPOGRPOTrainer(_config(tmp_path, save_freq=1, beta=0.0, resume_from=trainer.project_dir),
                                  brightness_reward, TinyFamily(), train_dataset=PROMPTS)
    assert resumed.first_epoch == 2
    assert all(torch.equal(v, trained[k]) for k, v in resumed.sd_pipeline.denoiser.state_dict().items())


def test_interface_names_the_missing_method(tmp_path):
    class Incomplete(TinyFamily):
        def encode_conditioning(self, prompts):
            return DDPOStableDiffusionPipeline.encode_conditioning(self, prompts)

    with pytest.raises(NotImplementedError, match="Incomplete must implement encode_conditioning"):
        SafeDDPOGRPOTrainer(_config(tmp_path), brightness_reward, Incomplete(), train_dataset=PROMPTS)


def test_tail_steps_need_the_familys_deterministic_step(tmp_path):
    config = _config(tmp_path, sample_sde_window="fixed", sample_sde_window_size=2, sample_tail_steps=1)
    with pytest.raises(ValueError, match="sample_tail_steps=1 needs TinyFamily.deterministic_step"):
        SafeDDPOGRPOTrainer(config, brightness_reward, TinyFamily(), train_dataset=PROMPTS)
