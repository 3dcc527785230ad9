"""Training run used by tests/test_multiprocess.py; launch with `torchrun --standalone --nproc_per_node 2` or python.

Writes <out>/rank<r>.json with this rank's trainable parameters (flattened), logged rewards and what it saved.
"""

import argparse
import json
import os

import torch

torch.set_num_threads(1)

from datasets import Dataset  # noqa: E402

from trl_safediffusion import DefaultDDPOStableDiffusionPipeline, SafeDDPOGRPOConfig, SafeDDPOGRPOTrainer  # noqa: E402
from trl_safediffusion.testing_utils import tiny_sd3_pipeline, tiny_sd_pipeline  # noqa: E402


def reward(images, prompts, metadata):
    return images.float().mean(dim=(1, 2, 3)), {}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--samples-per-process", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--resume", default="")
    p.add_argument("--push-repo", default="")
    p.add_argument("--family", default="sd", choices=["sd", "sd3"])
    args = p.parse_args()
    dataset = Dataset.from_dict({"prompt": [f"object number {i}" for i in range(8)], "unsafe": [True, False] * 4})
    n = args.samples_per_process
    config = SafeDDPOGRPOConfig(
        num_epochs=args.epochs, sample_num_steps=4, sample_batch_size=n, sample_num_batches_per_epoch=1,
        train_batch_size=n, num_generations=4, mixed_precision="no", train_learning_rate=1e-2, train_clip_range=0.5,
        save_freq=1, logdir=os.path.join(args.out, "logs"), exp_name="mp", train_timesteps_per_forward=3,
        resume_from=args.resume, push_to_hub=bool(args.push_repo), hub_model_id=args.push_repo or None,
        hub_strategy="every_save",
    )
    if args.family == "sd3":  # flow matching with the Flow-GRPO SDE (sample_eta is its noise level)
        from trl_safediffusion import DefaultDDPOStableDiffusion3Pipeline

        config.sample_eta = 0.7
        pipe = DefaultDDPOStableDiffusion3Pipeline(tiny_sd3_pipeline(seed=0), use_lora=True, lora_rank=4)
    else:
        pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(seed=0), use_lora=True, lora_rank=4)
    params0 = torch.cat([q.detach().float().reshape(-1) for _, q in sorted(pipe.model.named_parameters()) if q.requires_grad])
    trainer = SafeDDPOGRPOTrainer(config, reward, pipe, train_dataset=dataset)
    trainer.train()
    trainer.save_pretrained(os.path.join(args.out, "model"))
    params = torch.cat([q.detach().float().reshape(-1) for _, q in sorted(pipe.model.named_parameters()) if q.requires_grad])
    record = {
        "rank": trainer.accelerator.process_index,
        "world": trainer.accelerator.num_processes,
        "first_epoch": trainer.first_epoch,
        "params": params.tolist(),
        "update": (params - params0).tolist(),
        "rewards": [[r["epoch"], r["reward_mean"]] for r in trainer.log_history if "reward_mean" in r],
    }
    with open(os.path.join(args.out, f"rank{record['rank']}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
