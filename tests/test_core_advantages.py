"""Group advantages and the clipped PPO loss against hand-computed values; config validation."""

import math

import numpy as np
import pytest
import torch

from trl_safediffusion import DDPOConfig, SafeDDPOGRPOConfig, group_advantages
from trl_safediffusion.ddpo_trainer import clipped_surrogate_loss


def test_group_advantages_by_hand():
    rewards = np.array([1.0, 2.0, 3.0, 6.0, 0.5, 0.5, 0.5, 0.5])
    adv, stats = group_advantages(rewards, group_size=4, scale="group", eps=1e-8)
    # group 1: mean 3, unbiased std sqrt((4 + 1 + 0 + 9) / 3), torch's default and the reference code's
    s = math.sqrt(14 / 3)
    np.testing.assert_allclose(adv[:4], [-2 / s, -1 / s, 0.0, 3 / s], rtol=1e-7)
    # group 2 has zero variance: advantage 0, never NaN
    np.testing.assert_array_equal(adv[4:], [0.0, 0.0, 0.0, 0.0])
    assert stats["zero_std_fraction"] == 0.5 and stats["nonfinite"] == 0
    # the population std (divides by n) stays available
    adv_pop, _ = group_advantages(rewards, group_size=4, std="population")
    p = math.sqrt(14 / 4)
    np.testing.assert_allclose(adv_pop[:4], [-2 / p, -1 / p, 0.0, 3 / p], rtol=1e-7)
    np.testing.assert_array_equal(adv_pop[4:], [0.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("G", [4, 16])
def test_group_advantages_match_torch_unbiased_std(G):
    """The reference code's advantages: (r - mean_g) / (torch.std(r_g) + 1e-8), torch's std being unbiased."""
    rewards = np.random.default_rng(G).normal(size=3 * G)
    r = torch.tensor(rewards, dtype=torch.float64).view(-1, G)
    expected = ((r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + 1e-8)).reshape(-1).numpy()
    adv, _ = group_advantages(rewards, G)
    np.testing.assert_allclose(adv, expected, rtol=1e-12)
    adv_pop, _ = group_advantages(rewards, G, std="population")
    np.testing.assert_allclose(adv_pop / adv, math.sqrt(G / (G - 1)), rtol=1e-6)
    with pytest.raises(ValueError, match="std must be"):
        group_advantages(rewards, G, std="biased")


def test_group_advantages_zero_variance_with_rounding():
    # 0.1 * 16 has a mean that is not exactly 0.1 in floating point; the group must still get 0, not +-1e7
    adv, stats = group_advantages(np.full(16, 0.1), group_size=16)
    np.testing.assert_array_equal(adv, np.zeros(16))
    assert stats["zero_std_fraction"] == 1.0


def test_group_advantages_nonfinite_and_other_scalings():
    rewards = np.array([1.0, np.nan, 3.0, np.inf, 2.0, 4.0])
    adv, stats = group_advantages(rewards, group_size=3)
    # group 1 statistics over {1, 3}: mean 2, unbiased std sqrt(2)
    np.testing.assert_allclose(adv[:3], [-1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)], rtol=1e-7)
    # group 2 over {2, 4}: mean 3, unbiased std sqrt(2); the inf sample gets 0
    np.testing.assert_allclose(adv[3:], [0.0, -1 / math.sqrt(2), 1 / math.sqrt(2)], rtol=1e-7)
    assert stats["nonfinite"] == 2
    r = np.array([0.0, 2.0, 10.0, 14.0])
    batch_std = r.std(ddof=1)
    adv_b, _ = group_advantages(r, 2, scale="batch")
    np.testing.assert_allclose(adv_b, [-1 / batch_std, 1 / batch_std, -2 / batch_std, 2 / batch_std], rtol=1e-7)
    adv_n, _ = group_advantages(r, 2, scale="none")
    np.testing.assert_allclose(adv_n, [-1.0, 1.0, -2.0, 2.0])


def test_clipped_loss_inside_and_outside_clip_range():
    adv = torch.tensor([1.0, -2.0, 1.5, -0.5])
    ratio = torch.tensor([1.05, 1.05, 1.5, 0.5])
    eps = 0.2
    # per sample: max(-A r, -A clip(r))
    #  A=1,   r=1.05 (inside)          -> -1.05
    #  A=-2,  r=1.05 (inside)          -> 2.1
    #  A=1.5, r=1.5 (clipped to 1.2)   -> max(-2.25, -1.8) = -1.8
    #  A=-0.5,r=0.5 (clipped to 0.8)   -> max(0.25, 0.4) = 0.4
    expected = (-1.05 + 2.1 - 1.8 + 0.4) / 4
    assert clipped_surrogate_loss(adv, eps, ratio).item() == pytest.approx(expected, rel=1e-6)


def test_ddpo_config_keeps_trl_defaults():
    c = DDPOConfig()
    assert (c.sample_num_steps, c.sample_eta, c.sample_guidance_scale) == (50, 1.0, 5.0)
    assert (c.train_learning_rate, c.train_clip_range, c.train_adv_clip_max) == (3e-4, 1e-4, 5.0)
    assert (c.sample_batch_size, c.train_batch_size, c.sample_num_batches_per_epoch) == (1, 1, 2)
    assert (c.mixed_precision, c.num_checkpoint_limit, c.tracker_project_name) == ("fp16", 5, "trl")
    g = SafeDDPOGRPOConfig()
    assert (g.num_generations, g.train_adv_clip_max, g.sample_eta, g.sample_guidance_scale, g.beta) == (16, 2.5, 1.0, 5.0, 0.0)
    assert g.share_initial_noise and g.scale_rewards == "group" and g.advantage_std == "unbiased"
    # the reference code's sampling: 4 prompts x 16 images per process per epoch, sample and train batch 4
    assert (g.sample_batch_size, g.train_batch_size) == (4, 4)
    assert g.sample_batch_size * g.sample_num_batches_per_epoch == 4 * g.num_generations


def test_grpo_default_plan_samples_four_prompts_of_sixteen(tmp_path):
    from datasets import Dataset

    from conftest import brightness_reward
    from trl_safediffusion import DefaultDDPOStableDiffusionPipeline, SafeDDPOGRPOTrainer
    from trl_safediffusion.testing_utils import tiny_sd_pipeline

    config = SafeDDPOGRPOConfig(logdir=str(tmp_path), mixed_precision="no")
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    dataset = Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(8)]})
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=dataset)
    plan = trainer._sample_plan(0)
    assert len(plan.prompts) == 64
    groups = [plan.prompts[i : i + 16] for i in range(0, 64, 16)]
    assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 4
    assert all(len(set(plan.noise_seeds[i : i + 16])) == 1 for i in range(0, 64, 16))  # shared noise per group


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"sample_batch_size": 2, "train_batch_size": 4}, "sample_batch_size"),
        ({"sample_batch_size": 6, "sample_num_batches_per_epoch": 1, "train_batch_size": 4}, "train_batch_size"),
        ({"sample_eta": 0.0}, "sample_eta"),
        ({"mixed_precision": "fp32"}, "mixed_precision"),
        ({"train_timestep_fraction": 1.5}, "train_timestep_fraction"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"hub_strategy": "sometimes"}, "hub_strategy"),
    ],
)
def test_ddpo_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DDPOConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_generations": 1}, "num_generations"),
        ({"sample_batch_size": 6, "sample_num_batches_per_epoch": 1, "train_batch_size": 2, "num_generations": 4}, "num_generations"),
        ({"scale_rewards": "global"}, "scale_rewards"),
        ({"advantage_std": "sample"}, "advantage_std"),
        ({"beta": -0.1}, "beta"),
        ({"reward_weights": ["a"]}, "reward_weights"),
    ],
)
def test_grpo_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SafeDDPOGRPOConfig(**kwargs)


def test_to_dict_never_holds_tokens():
    c = DDPOConfig(hub_token="hf_secret123", tracker_kwargs={"wandb_token": "x"}, log_with="tensorboard")
    flat = c.to_dict()
    assert "hf_secret123" not in str(flat) and "hub_token" not in flat and "tracker_kwargs/wandb_token" not in flat


def test_offline_clip_tokenizer_matches_open_clip():
    import open_clip

    from trl_safediffusion.tokenization import clip_tokenizer

    tok = clip_tokenizer()
    ref = open_clip.get_tokenizer("ViT-B-32")
    for text in ["two blue triangles", "a crimson circle, and 3 scarlet squares!", "naïve café"]:
        ours = tok(text).input_ids
        theirs = [int(i) for i in ref([text])[0] if int(i) != 0]
        assert ours == theirs, text
