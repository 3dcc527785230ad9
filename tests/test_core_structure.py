"""The structure anchor (`structure_weight`, `structure_fn`): its value against float64 by hand, its gradient, its
validation and its logging."""

import copy
import math

import pytest
import torch

from conftest import brightness_reward
from test_core_training import grpo_config, prompt_dataset
from trl_safediffusion import DefaultDDPOStableDiffusionPipeline, SafeDDPOGRPOTrainer
from trl_safediffusion.testing_utils import tiny_sd_pipeline


def features(latents):
    """A nonlinear feature map: per-pixel tanh of the channel sum (any dtype, so float64 by hand too)."""
    return torch.tanh(latents.sum(dim=1))


def _trainer(tmp_path, structure_fn=features, **kw):
    torch.manual_seed(0)
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=False)
    config = grpo_config(tmp_path, sample_guidance_scale=3.0, **kw)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=prompt_dataset(),
                                  structure_fn=structure_fn)
    with torch.no_grad():  # move the policy away from the frozen reference copy
        gen = torch.Generator().manual_seed(1)
        for p in trainer.unet.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return trainer


def _batch(trainer):
    samples, _, _, plan = trainer._rollout_epoch(0)
    s = {k: torch.cat([b[k] for b in samples]) for k in samples[0]}
    n = s["latents"].shape[0]
    args = (s["latents"][:, 1], s["timesteps"][:, 1], s["next_latents"][:, 1], s["log_probs"][:, 1], torch.zeros(n),
            trainer._training_embeds(s["prompt_embeds"]))
    return args, plan.metadata


def _x0_guided64(trainer, unet, latents, t, embeds, guidance):
    """x0_hat of the guided epsilon prediction, float64 (DDIM eq. 12)."""
    unet = copy.deepcopy(unet).double()
    neg, pos = embeds.chunk(2)
    with torch.no_grad():
        eu = unet(latents.double(), t, neg.double()).sample
        ec = unet(latents.double(), t, pos.double()).sample
    eps = eu + guidance * (ec - eu)
    ac = trainer.sd_pipeline.scheduler.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    return (latents.double() - (1 - ac).sqrt() * eps) / ac.sqrt()


@pytest.mark.parametrize("beta,kl_mode", [(0.0, "guided"), (0.5, "branches")])
def test_structure_anchor_matches_float64_by_hand(tmp_path, beta, kl_mode):
    trainer = _trainer(tmp_path, beta=beta, kl_mode=kl_mode, structure_weight=2.5)
    assert trainer.ref_unet is not None  # the anchor needs the frozen reference even without a KL
    args, metadata = _batch(trainer)
    assert trainer._structure_weights(metadata).tolist() == [2.5 if m["unsafe"] else 0.0 for m in metadata]
    metadata = [{"unsafe": i % 3 == 0} for i in range(len(metadata))]  # benign rows too
    weights = trainer._structure_weights(metadata)
    assert 0 < int((weights > 0).sum()) < len(metadata)
    terms = trainer.compute_loss_terms(*args, None, weights)
    loss_with, kl, structure = terms["loss"], terms["kl"], terms["structure"]
    loss_without = trainer.compute_loss_terms(*args, None, None)["loss"]

    latents, t, _, _, _, embeds = args
    sched = trainer.sd_pipeline.scheduler
    assert sched.config.prediction_type == "epsilon" and not sched.config.clip_sample
    x_pol = _x0_guided64(trainer, trainer.unet, latents, t, embeds, 3.0)
    x_ref = _x0_guided64(trainer, trainer.ref_unet, latents, t, embeds, 3.0)
    gap = ((features(x_pol) - features(x_ref)) ** 2).flatten(1).mean(dim=1)
    expected = float((weights.double() * gap).sum() / len(metadata))
    assert expected > 1e-6
    assert float(structure.detach()) == pytest.approx(expected, rel=1e-3)
    assert float((loss_with - loss_without).detach()) == pytest.approx(expected, rel=1e-3)
    assert (float(kl.detach()) > 0) == (beta > 0)


def test_structure_anchor_gradient_and_zero_at_the_reference(tmp_path):
    trainer = _trainer(tmp_path, structure_weight=1.0)
    args, metadata = _batch(trainer)
    weights = trainer._structure_weights([{"unsafe": i % 2 == 0} for i in range(len(metadata))])
    terms = trainer.compute_loss_terms(*args, None, weights)  # advantages are zero: loss is the anchor
    loss, structure = terms["loss"], terms["structure"]
    assert float(structure.detach()) > 0
    loss.backward()
    grads = [p.grad for p in trainer.unet.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    # benign rows carry no anchor
    assert float(trainer.compute_loss_terms(*args, None, torch.zeros_like(weights))["structure"].detach()) == 0.0
    trainer.unet.zero_grad(set_to_none=True)
    trainer.accelerator.unwrap_model(trainer.unet).load_state_dict(trainer.ref_unet.state_dict())
    assert float(trainer.compute_loss_terms(*args, None, weights)["structure"].detach()) == pytest.approx(0.0, abs=1e-12)


def test_structure_anchor_trains_and_is_logged(tmp_path):
    trainer = _trainer(tmp_path, structure_weight=1.0)
    trainer.train()
    logged = [r["train/structure"] for r in trainer.log_history if "train/structure" in r]
    assert len(logged) == 4  # 2 epochs x 2 minibatches of 4
    assert all(math.isfinite(v) for v in logged) and max(logged) > 0
    assert trainer._model_card_info()["recipe"]["structure_weight"] == 1.0


def test_structure_settings_are_validated(tmp_path):
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=False)
    with pytest.raises(ValueError, match="structure_weight"):
        grpo_config(tmp_path, structure_weight=-1.0)
    with pytest.raises(ValueError, match="needs structure_fn"):
        SafeDDPOGRPOTrainer(grpo_config(tmp_path, structure_weight=1.0), brightness_reward, pipe,
                            train_dataset=prompt_dataset())
    with pytest.raises(ValueError, match="structure_weight is 0"):
        SafeDDPOGRPOTrainer(grpo_config(tmp_path), brightness_reward, pipe, train_dataset=prompt_dataset(),
                            structure_fn=features)
    with pytest.raises(ValueError, match="structure_fn must be callable"):
        SafeDDPOGRPOTrainer(grpo_config(tmp_path, structure_weight=1.0), brightness_reward, pipe,
                            train_dataset=prompt_dataset(), structure_fn="tanh")
    trainer = SafeDDPOGRPOTrainer(grpo_config(tmp_path, structure_weight=1.0), brightness_reward, pipe,
                                  train_dataset=prompt_dataset(labels=False), structure_fn=features)
    with pytest.raises(ValueError, match="label_column 'unsafe'"):
        trainer.train()
