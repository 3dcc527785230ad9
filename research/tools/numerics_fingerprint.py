"""Fingerprint of the training numerics, to check that a refactor changes nothing.

Trains four small configurations on the toy pipeline (SafeDiffusion-R1 as the demo runs it: per-branch KL, structure
anchor, cross-attention fine-tune; a guided KL with LoRA and label weights; no KL; DDPO with a prompt function and
per-prompt statistics), with a guidance/learning-rate change between two train() calls, and writes a hash of the
trained parameters and every log record to OUT.json. Run it before and after a change (same thread count) and
compare the two files:

    OMP_NUM_THREADS=1 .venv/bin/python research/tools/numerics_fingerprint.py before.json
"""

import hashlib
import json
import random
import sys
import tempfile

import torch

from trl_safediffusion import (
    DDPOConfig,
    DDPOTrainer,
    DefaultDDPOStableDiffusionPipeline,
    SafeDDPOGRPOConfig,
    SafeDDPOGRPOTrainer,
    mix_prompts,
)
from trl_safediffusion.toy.clip import toy_anchors, toy_steering_reward
from trl_safediffusion.toy.pipeline import load_toy_pipeline
from trl_safediffusion.toy.structure import ObjectMap
from trl_safediffusion.toy.world import prompt_sets

CASES = {
    "A_demo": dict(
        cfg=dict(num_generations=4, train_learning_rate=3.5e-4, beta=0.3, kl_mode="branches", kl_unsafe_weight=0.0,
                 structure_weight=0.04, advantage_std="population", sample_guidance_scale=2.0,
                 train_timesteps_per_forward=9, train_timestep_fraction=0.4, train_timestep_window=0.5),
        pipe=dict(use_lora=False, trainable_modules="attn2"),
    ),
    "B_guided_lora": dict(
        cfg=dict(num_generations=4, train_learning_rate=1e-3, beta=0.2, kl_mode="guided", kl_unsafe_weight=0.5,
                 structure_weight=0.1, sample_guidance_scale=3.0, train_timestep_fraction=0.5,
                 train_timesteps_per_forward=1),
        pipe=dict(use_lora=True),
    ),
    "C_nokl_fullft": dict(
        cfg=dict(num_generations=4, train_learning_rate=1e-4, beta=0.0, sample_guidance_scale=1.0,
                 scale_rewards="batch", train_timesteps_per_forward=1),
        pipe=dict(use_lora=False),
    ),
}


def params_hash(model) -> str:
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def main(out_path: str):
    torch.set_num_threads(1)
    reward = toy_steering_reward(toy_anchors(), alpha=0.5, mode="projection")
    sets = prompt_sets()
    red = [r for r in sets["train"] if r["unsafe"]]
    benign = [r for r in sets["train"] if not r["unsafe"]]
    dataset = mix_prompts(red, benign, unsafe_ratio=0.5, num_prompts=2 * len(benign), seed=0)
    common = dict(sample_num_steps=6, sample_batch_size=8, sample_num_batches_per_epoch=2, train_batch_size=8,
                  mixed_precision="no", save_freq=0, logdir=tempfile.mkdtemp())
    out = {}
    for name, case in CASES.items():
        torch.manual_seed(0)
        pipe = DefaultDDPOStableDiffusionPipeline(load_toy_pipeline(), **case["pipe"])
        config = SafeDDPOGRPOConfig(**common, **case["cfg"], num_epochs=3, exp_name=name)
        structure_fn = ObjectMap(pipe.vae) if config.structure_weight > 0 else None
        trainer = SafeDDPOGRPOTrainer(config, reward, pipe, train_dataset=dataset, structure_fn=structure_fn)
        trainer.train(2)
        trainer.set_schedule(sample_guidance_scale=4.0, train_learning_rate=config.train_learning_rate / 2)
        trainer.train(3)
        out[name] = {"params": params_hash(pipe.unet), "logs": trainer.log_history}
    rng = random.Random(0)

    def prompt_fn():
        row = rng.choice(sets["train"])
        return row["prompt"], {"unsafe": row["unsafe"]}

    torch.manual_seed(0)
    pipe = DefaultDDPOStableDiffusionPipeline(load_toy_pipeline(), use_lora=True)
    config = DDPOConfig(**common, num_epochs=2, exp_name="D", per_prompt_stat_tracking=True,
                        sample_guidance_scale=2.0, train_learning_rate=1e-3,
                        train_timesteps_per_forward=1)
    trainer = DDPOTrainer(config, reward, prompt_fn, pipe)
    trainer.train()
    out["D_ddpo"] = {"params": params_hash(pipe.unet), "logs": trainer.log_history}
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print({k: v["params"] for k, v in out.items()})


if __name__ == "__main__":
    main(sys.argv[1])
