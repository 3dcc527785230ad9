"""The KL penalty to the reference UNet: guided vs per-branch KL and the per-prompt weights, against float64 by hand."""

import copy
import math

import pytest
import torch

from conftest import brightness_reward
from test_core_training import grpo_config, prompt_dataset
from trl_safediffusion import DefaultDDPOStableDiffusionPipeline, SafeDDPOGRPOConfig, SafeDDPOGRPOTrainer
from trl_safediffusion.testing_utils import tiny_sd_pipeline


def _trainer(tmp_path, labels=True, **kw):
    torch.manual_seed(0)
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=False)
    config = grpo_config(tmp_path, beta=0.5, sample_guidance_scale=3.0, **kw)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=prompt_dataset(labels=labels))
    # move the policy away from the frozen reference copy so that the KL is not zero
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in trainer.unet.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return trainer


def _eps64(unet, latents, t, embeds):
    unet = copy.deepcopy(unet).double()
    with torch.no_grad():
        return unet(latents.double(), t, embeds.double()).sample


def _hand_kl(trainer, latents, t, d_eps):
    """Per-sample KL of two DDIM steps whose epsilon predictions differ by d_eps (float64, DDIM eq. 12/16)."""
    sched = trainer.sd_pipeline.scheduler
    assert not sched.config.clip_sample and sched.config.prediction_type == "epsilon"
    ac = sched.alphas_cumprod.double()
    step = sched.config.num_train_timesteps // sched.num_inference_steps
    out = []
    for i in range(latents.shape[0]):
        a_t = float(ac[int(t[i])])
        prev = int(t[i]) - step
        a_p = float(ac[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)
        var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p) * trainer.config.sample_eta**2
        k = -math.sqrt(a_p) * math.sqrt(1 - a_t) / math.sqrt(a_t) + math.sqrt(1 - a_p - var)
        out.append(float((k**2 * d_eps[i] ** 2 / (2 * var)).mean()))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["guided", "branches"])
def test_kl_matches_float64_by_hand(tmp_path, mode):
    trainer = _trainer(tmp_path, kl_mode=mode, kl_unsafe_weight=0.25)
    samples, _, _, plan = trainer._rollout_epoch(0)
    s = {k: torch.cat([b[k] for b in samples]) for k in samples[0]}  # two groups
    n = s["latents"].shape[0]
    latents, t = s["latents"][:, 1], s["timesteps"][:, 1]
    assert trainer._kl_weights(plan.metadata).tolist() == [0.25 if m["unsafe"] else 1.0 for m in plan.metadata]
    labels = [True, "false", "Unsafe", 0, "yes", False, 1, "no"][:n]
    weights = trainer._kl_weights([{"unsafe": v} for v in labels])
    assert weights.tolist() == [0.25, 1.0, 0.25, 1.0, 0.25, 1.0, 0.25, 1.0][:n]
    embeds = trainer._training_embeds(s["prompt_embeds"])
    kl = trainer.compute_loss_terms(latents, t, s["next_latents"][:, 1], s["log_probs"][:, 1], torch.zeros(n),
                                     embeds, weights)["kl"]

    neg, pos = embeds.chunk(2)
    du = _eps64(trainer.unet, latents, t, neg) - _eps64(trainer.ref_unet, latents, t, neg)
    dc = _eps64(trainer.unet, latents, t, pos) - _eps64(trainer.ref_unet, latents, t, pos)
    w = weights.double()
    if mode == "guided":
        expected = (w * _hand_kl(trainer, latents, t, du + 3.0 * (dc - du))).mean()
    else:
        expected = (w * _hand_kl(trainer, latents, t, dc) + _hand_kl(trainer, latents, t, du)).mean()
    assert float(expected) > 1e-4
    assert float(kl.detach()) == pytest.approx(float(expected), rel=1e-3)


def test_kl_is_zero_only_at_the_reference(tmp_path):
    """With kl_unsafe_weight=0 the unconditional branch still costs KL; a policy equal to the reference costs none."""
    trainer = _trainer(tmp_path, kl_mode="branches", kl_unsafe_weight=0.0)
    samples, _, _, plan = trainer._rollout_epoch(0)
    s = {k: torch.cat([b[k] for b in samples]) for k in samples[0]}  # two groups
    n = s["latents"].shape[0]
    weights = trainer._kl_weights(plan.metadata[:n])
    args = (s["latents"][:, 1], s["timesteps"][:, 1], s["next_latents"][:, 1], s["log_probs"][:, 1], torch.zeros(n),
            trainer._training_embeds(s["prompt_embeds"]))
    assert float(trainer.compute_loss_terms(*args, weights)["kl"].detach()) > 0
    # make the policy equal to the reference: zero KL in both modes
    trainer.accelerator.unwrap_model(trainer.unet).load_state_dict(trainer.ref_unet.state_dict())
    for mode in ("branches", "guided"):
        trainer.config.kl_mode = mode
        assert float(trainer.compute_loss_terms(*args, weights)["kl"].detach()) == pytest.approx(0.0, abs=1e-10)


def test_kl_settings_are_validated(tmp_path):
    with pytest.raises(ValueError, match="kl_mode"):
        grpo_config(tmp_path, kl_mode="cond")
    with pytest.raises(ValueError, match="kl_unsafe_weight"):
        grpo_config(tmp_path, kl_unsafe_weight=1.5)
    assert SafeDDPOGRPOConfig().kl_mode == "guided" and SafeDDPOGRPOConfig().kl_unsafe_weight == 1.0


def test_kl_unsafe_weight_needs_the_label_column(tmp_path):
    trainer = _trainer(tmp_path, labels=False, kl_unsafe_weight=0.0)
    with pytest.raises(ValueError, match="label_column 'unsafe'"):
        trainer.train()


def test_training_with_branch_kl_on_benign_prompts_only(tmp_path):
    trainer = _trainer(tmp_path, kl_mode="branches", kl_unsafe_weight=0.0, num_epochs=1)
    trainer.train()
    kls = [r["train/kl"] for r in trainer.log_history if "train/kl" in r]
    assert kls and all(k > 0 and math.isfinite(k) for k in kls)
