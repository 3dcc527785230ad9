"""The Stable Diffusion 3 family: a tiny SD3 pipeline built from configs trains with Flow-GRPO's SDE policy, saves in
the stock diffusers formats, and names its bad inputs."""

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from flow_family_checks import (
    assert_same_velocity,
    check_bf16_checkpoint_resume,
    check_brightness_reward_rises,
    check_training_changes_the_trainable_parameters_only,
    randomize_lora,
    train_and_save,
    train_lora_and_load_into_stock,
)
from trl_safediffusion import DefaultDDPOStableDiffusion3Pipeline, SafeDDPOGRPOConfig
from trl_safediffusion.testing_utils import tiny_sd3_pipeline

SEQ = 8  # T5 tokens (zeros without T5): kept short for speed


def _pipe(use_lora=True, **kw):
    return DefaultDDPOStableDiffusion3Pipeline(tiny_sd3_pipeline(), use_lora=use_lora, max_sequence_length=SEQ, **kw)


def _config(tmp_path, **kw):
    base = dict(num_epochs=2, sample_num_steps=4, sample_batch_size=4, sample_num_batches_per_epoch=2,
                train_batch_size=4, num_generations=4, mixed_precision="no", train_learning_rate=1e-3,
                train_clip_range=0.2, save_freq=0, logdir=str(tmp_path / "logs"), sample_eta=0.7,
                sample_guidance_scale=3.0, beta=0.01)
    base.update(kw)
    return SafeDDPOGRPOConfig(**base)


def _velocity(transformer, x, t, embeds, pooled):
    with torch.no_grad():
        return transformer(hidden_states=x, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled,
                           return_dict=False)[0]


@pytest.mark.parametrize("use_lora", [True, False])
def test_training_changes_the_trainable_parameters_only(tmp_path, use_lora):
    check_training_changes_the_trainable_parameters_only(_pipe(use_lora=use_lora), _config(tmp_path), use_lora)


def test_brightness_reward_rises(tmp_path):
    config = _config(tmp_path, num_epochs=4, sample_num_steps=4, sample_batch_size=8, sample_num_batches_per_epoch=1,
                     train_batch_size=8, num_generations=4, train_learning_rate=1e-2, train_num_inner_epochs=2,
                     sample_guidance_scale=1.0, beta=0.0, seed=0)
    # seeds 0-3 all rise, by 3e-4 to 1.4e-3 (the per-sample brightness std is ~8e-4)
    check_brightness_reward_rises(_pipe(use_lora=False), config, margin=5e-4)


def test_lora_save_loads_into_the_stock_pipeline(tmp_path):
    pipe = _pipe(use_lora=True, lora_rank=4, lora_alpha=8)
    out = tmp_path / "lora"
    stock, inputs, trained = train_lora_and_load_into_stock(
        pipe, _config(tmp_path, num_epochs=1, train_learning_rate=3e-3), out, tiny_sd3_pipeline, _velocity)
    # sampling: the stock pipeline's Euler ODE is the adapter's rollout at noise level 0
    init = torch.randn(2, *pipe.latent_shape(), generator=torch.Generator().manual_seed(1))
    ours = pipe(["a cat", "a dog"], num_inference_steps=4, guidance_scale=3.0, eta=0.0, latents=init,
                output_type="pt")
    theirs = stock(["a cat", "a dog"], num_inference_steps=4, guidance_scale=3.0, latents=init.clone(),
                   output_type="pt", max_sequence_length=SEQ, height=16, width=16)
    torch.testing.assert_close(theirs.images, ours.images, rtol=0, atol=1e-5)
    # the checkpoint hook loads the same weights back into the adapter
    fresh = _pipe(use_lora=True, lora_rank=4, lora_alpha=8)
    fresh.load_lora_into_transformer(str(out))
    torch.testing.assert_close(_velocity(fresh.transformer, *inputs), trained, rtol=0, atol=1e-6)


def test_full_save_loads_with_from_pretrained(tmp_path):
    pipe = _pipe(use_lora=False)
    out = tmp_path / "full"
    train_and_save(pipe, _config(tmp_path, num_epochs=1), out)
    # without T5 the stock loader is told so, as diffusers documents for SD3 without T5
    loaded = StableDiffusion3Pipeline.from_pretrained(str(out), text_encoder_3=None, tokenizer_3=None)
    assert loaded.text_encoder_3 is None
    trained = pipe.transformer.state_dict()
    for k, v in loaded.transformer.state_dict().items():
        assert torch.equal(v, trained[k].to(v.dtype)), k
    assert_same_velocity(loaded.transformer, pipe, _velocity, tol=0)


def test_fused_lora_save_loads_with_from_pretrained(tmp_path):
    pipe = _pipe(use_lora=True)
    randomize_lora(pipe)
    pipe.save_pretrained(str(tmp_path / "fused"), fuse_lora=True)
    loaded = StableDiffusion3Pipeline.from_pretrained(str(tmp_path / "fused"), text_encoder_3=None, tokenizer_3=None)
    assert_same_velocity(loaded.transformer, pipe, _velocity, tol=1e-5)


def test_conditioning_and_resolution():
    pipe = _pipe(use_lora=True)
    cond = pipe.encode_conditioning(["a cat", "a dog", "a cat"])
    # without T5 the SEQ zero tokens are one token (collapse_zero_t5_tokens)
    assert cond["prompt_embeds"].shape == (3, 77 + 1, 64) and cond["pooled_prompt_embeds"].shape == (3, 64)
    assert torch.equal(cond["prompt_embeds"][0], cond["prompt_embeds"][2])
    embeds, _, pooled, _ = pipe.sd_pipeline.encode_prompt("a dog", None, None, device="cpu",
                                                          max_sequence_length=SEQ, do_classifier_free_guidance=False)
    torch.testing.assert_close(cond["prompt_embeds"][1:2], embeds[:, : 77 + 1])
    assert embeds.shape[1] == 77 + SEQ and embeds[:, 77:].abs().max() == 0  # the one token stands for SEQ zeros
    torch.testing.assert_close(cond["pooled_prompt_embeds"][1:2], pooled)
    assert pipe.latent_shape() == (4, 8, 8)  # native: sample_size 8 * vae factor 2 = 16 px
    assert _pipe(sample_height=32, sample_width=12).latent_shape() == (4, 16, 6)
    assert pipe.latent_shape(8, 24) == (4, 4, 12)
    t5 = DefaultDDPOStableDiffusion3Pipeline(tiny_sd3_pipeline(with_t5=True), max_sequence_length=SEQ)
    out = t5.rollout(t5.encode_conditioning(["a cat"]), num_inference_steps=2, guidance_scale=2.0, eta=0.7,
                     generators=[torch.Generator().manual_seed(0)])
    assert out.images.shape == (1, 3, 16, 16) and torch.isfinite(out.log_probs).all()


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="sample_height must be a multiple of vae_scale_factor \\* patch_size = 4"):
        _pipe(sample_height=18)
    with pytest.raises(ValueError, match="sample_width"):
        _pipe(sample_width=256)  # beyond pos_embed_max_size
    with pytest.raises(ValueError, match="height"):
        _pipe().latent_shape(height=10)
    sd3 = tiny_sd3_pipeline()
    sd3.scheduler = DDIMScheduler()
    with pytest.raises(ValueError, match="scheduler must be a FlowMatchEulerDiscreteScheduler.*DDIMScheduler"):
        DefaultDDPOStableDiffusion3Pipeline(sd3)
    sd3.scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="noise_level"):
        DefaultDDPOStableDiffusion3Pipeline(sd3, noise_level=-0.5)
    pipe = _pipe()
    pipe.set_timesteps(4)
    x = torch.randn(1, *pipe.latent_shape())
    with pytest.raises(ValueError, match="noise_level"):
        pipe.step_distribution(pipe.transformer, x, pipe.scheduler.timesteps[0], pipe.encode_conditioning(["a"]),
                               eta=-1.0)
    with pytest.raises(ValueError, match="trainable_modules"):
        DefaultDDPOStableDiffusion3Pipeline(tiny_sd3_pipeline(), use_lora=True, trainable_modules="attn")


@pytest.mark.parametrize("use_lora", [True, False])
def test_bf16_checkpoint_resume(tmp_path, use_lora):
    trainer = check_bf16_checkpoint_resume(_pipe, lambda **kw: _config(tmp_path, **kw), use_lora)
    trainer.save_pretrained(str(tmp_path / "saved"))


def test_zero_t5_tokens_run_as_one_token_with_the_same_velocities():
    """Without T5 the stock pipeline appends max_sequence_length zero tokens; the adapter keeps one with a log(n)
    attention bias inside its own model calls: the stock transformer's velocities on the full sequence, and the
    transformer's processors are its own again afterwards."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    seq = 64
    full = DefaultDDPOStableDiffusion3Pipeline(tiny_sd3_pipeline(), use_lora=False, max_sequence_length=seq,
                                               collapse_zero_t5_tokens=False)
    collapsed = DefaultDDPOStableDiffusion3Pipeline(tiny_sd3_pipeline(), use_lora=False, max_sequence_length=seq)
    assert collapsed.collapse_zero_t5_tokens and not full.collapse_zero_t5_tokens
    prompts = ["a red square", "two blue circles", ""]
    wide, narrow = full.encode_conditioning(prompts), collapsed.encode_conditioning(prompts)
    assert wide["prompt_embeds"].shape[1] == narrow["prompt_embeds"].shape[1] + seq - 1
    torch.testing.assert_close(narrow["prompt_embeds"], wide["prompt_embeds"][:, : narrow["prompt_embeds"].shape[1]])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in collapsed.transformer.parameters():  # away from the zero-initialised output layers
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    x = torch.randn(3, *collapsed.latent_shape(), generator=gen)
    t = torch.tensor([20.0, 500.0, 980.0])
    with torch.no_grad():
        ours = collapsed.predict(collapsed.transformer, x, t, narrow)
        stock = _velocity(collapsed.transformer, x, t, wide["prompt_embeds"], wide["pooled_prompt_embeds"])
        one_token = _velocity(collapsed.transformer, x, t, narrow["prompt_embeds"], narrow["pooled_prompt_embeds"])
    assert stock.abs().mean() > 0.1
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-4)
    assert (one_token - stock).abs().max() > 1e-3  # without the log(n) bias the one token is not the n zeros
    assert all(isinstance(p, JointAttnProcessor2_0) for p in collapsed.transformer.attn_processors.values())
    # with T5 there are no zero tokens: nothing is collapsed
    assert not DefaultDDPOStableDiffusion3Pipeline(tiny_sd3_pipeline(with_t5=True), max_sequence_length=SEQ) \
        .collapse_zero_t5_tokens
    with pytest.raises(ValueError, match="collapse_zero_t5_tokens"):
        DefaultDDPOStableDiffusion3Pipeline(tiny_sd3_pipeline(), collapse_zero_t5_tokens="yes")
