"""Checks shared by the flow-matching family tests (SD3 and FLUX): training changes only what trains, the brightness
reward rises, a bf16 run checkpoints and resumes. Each family's test file supplies its tiny pipeline and config."""

import numpy as np
import torch
from datasets import Dataset

from conftest import brightness_reward
from trl_safediffusion import SafeDDPOGRPOTrainer

PROMPTS = Dataset.from_dict({"prompt": [f"a photo of object {i}" for i in range(4)]})


def snapshot(module):
    return {n: p.detach().clone().float() for n, p in module.named_parameters()}


def frozen_components(pipe):
    return {"vae": pipe.vae, "text_encoder": pipe.sd_pipeline.text_encoder,
            "text_encoder_2": pipe.sd_pipeline.text_encoder_2}


def transformer_inputs(pipe, seed=0):
    """Two latents, two timesteps of a 4-step schedule and the conditioning of two prompts (float32)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *pipe.latent_shape(), generator=g)
    t = pipe.set_timesteps(4)[torch.tensor([0, 2])]
    cond = pipe.encode_conditioning(["a cat", "a dog"])
    return x, t, cond["prompt_embeds"].float(), cond["pooled_prompt_embeds"].float()


def check_training_changes_the_trainable_parameters_only(pipe, config, use_lora):
    """Two epochs of SafeDDPOGRPOTrainer: the transformer's trainable parameters change, nothing else does, every
    step has a log-probability and the KL is logged. Returns the first epoch's rollout batches."""
    transformer0 = snapshot(pipe.transformer)
    frozen0 = {name: snapshot(m) for name, m in frozen_components(pipe).items()}
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=PROMPTS)
    assert trainer._log_prob_steps == 4  # every flow SDE step has a log-probability
    batches, _, _, _ = trainer._rollout_epoch(0)
    assert set(batches[0]) >= {"prompt_embeds", "pooled_prompt_embeds", "timesteps", "latents", "log_probs"}
    trainer.train()
    trainable = {n for n, p in pipe.transformer.named_parameters() if p.requires_grad}
    assert trainable and (all("lora_" in n for n in trainable) if use_lora else len(trainable) == len(transformer0))
    changed = {n for n, p in pipe.transformer.named_parameters() if not torch.equal(p.float(), transformer0[n])}
    assert changed and changed <= trainable
    for name, module in frozen_components(pipe).items():
        for n, p in module.named_parameters():
            assert torch.equal(p.float(), frozen0[name][n]), f"frozen {name} weight {n} changed"
    assert any("train/kl" in r for r in trainer.log_history)
    return batches


def fixed_noise_brightness(pipe):
    """Mean brightness of 32 rollouts from fixed initial noise and step noise, without guidance: the policy's reward
    without the sampling noise of the epochs' rollouts (the tiny VAEs map latents to brightness weakly, ~1e-3 across
    samples)."""
    cond = pipe.encode_conditioning([f"a photo of object {i % 4}" for i in range(32)])
    init = torch.randn(32, *pipe.latent_shape(), generator=torch.Generator().manual_seed(123))
    out = pipe.rollout(cond, num_inference_steps=4, guidance_scale=1.0, eta=0.7, initial_latents=init,
                       generators=[torch.Generator().manual_seed(1000 + i) for i in range(32)])
    return float(out.images.mean())


def check_brightness_reward_rises(pipe, config, margin):
    """`config.num_epochs` (4) epochs with the brightness reward raise the fixed-noise brightness by more than
    `margin`."""
    before = fixed_noise_brightness(pipe)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=PROMPTS)
    trainer.train()
    rewards = [r["reward_mean"] for r in trainer.log_history if "reward_mean" in r]
    assert len(rewards) == 4 and all(np.isfinite(rewards))
    assert fixed_noise_brightness(pipe) > before + margin


def check_bf16_checkpoint_resume(make_pipe, make_config, use_lora):
    """Two bf16 epochs with a checkpoint after each; a new trainer resumed from the run starts at epoch 2 with the
    trained weights. Returns the first trainer."""
    config = make_config(save_freq=1, mixed_precision="bf16", beta=0.0)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, make_pipe(use_lora=use_lora), train_dataset=PROMPTS)
    trainer.train()
    trained = {k: v.detach().float().clone() for k, v in trainer.sd_pipeline.transformer.state_dict().items()}
    resumed = SafeDDPOGRPOTrainer(make_config(save_freq=1, mixed_precision="bf16", beta=0.0,
                                              resume_from=trainer.project_dir),
                                  brightness_reward, make_pipe(use_lora=use_lora), train_dataset=PROMPTS)
    assert resumed.first_epoch == 2
    state = resumed.sd_pipeline.transformer.state_dict()
    assert all(torch.equal(state[k].float(), v) for k, v in trained.items() if "lora_" in k or not use_lora)
    return trainer


def train_lora_and_load_into_stock(pipe, config, out, make_stock, velocity):
    """One epoch with LoRA, saved to `out`: the stock pipeline (`make_stock()`) with `load_lora_weights(out)` computes
    the trained transformer's velocity, which differs from the untrained stock one. Returns `(stock, inputs,
    trained velocity)`."""
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=PROMPTS)
    trainer.train()
    trainer.save_pretrained(str(out))
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    stock = make_stock()
    stock.load_lora_weights(str(out))
    inputs = transformer_inputs(pipe)
    trained = velocity(pipe.transformer, *inputs)
    torch.testing.assert_close(velocity(stock.transformer, *inputs), trained, rtol=0, atol=1e-6)
    assert not torch.allclose(velocity(make_stock().transformer, *inputs), trained, atol=1e-6)
    return stock, inputs, trained


def train_and_save(pipe, config, out):
    """One epoch, then `save_pretrained(out)`."""
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=PROMPTS)
    trainer.train()
    trainer.save_pretrained(str(out))


def randomize_lora(pipe):
    """Adapters with nonzero B, so that fusing them changes the transformer."""
    pipe.init_lora_weights(0)
    with torch.no_grad():
        for n, p in pipe.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)


def assert_same_velocity(transformer, pipe, velocity, tol):
    """`transformer` computes the adapter's velocity on `transformer_inputs(pipe)` within `tol` (rtol and atol)."""
    inputs = transformer_inputs(pipe)
    torch.testing.assert_close(velocity(transformer, *inputs), velocity(pipe.transformer, *inputs), rtol=tol, atol=tol)
