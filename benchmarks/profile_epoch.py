"""Where one epoch of SafeDDPOGRPOTrainer spends its time: sampling UNet, VAE decode, text encoding, reward, training
forward / backward / optimizer, and everything else.

Wall-clock timers wrap the real calls on this process's trainer and pipeline instances (the library is not modified):
`pipeline.rollout` (minus the `pipeline.decode_latents` it makes) is the sampling loop, `pipeline.predict` inside it is
the sampling UNet, `pipeline.encode_prompts` is text encoding, `trainer.reward_fn` the reward,
`trainer.calculate_loss` the training forward, `accelerator.backward` the backward and `clip_grad_norm_` +
`optimizer.step` + `optimizer.zero_grad` the optimizer. "Everything else" is the epoch's wall time minus all of these.
On CPU every op is synchronous, so wall timers measure the ops themselves; on CUDA the script synchronises at each
timer boundary.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_epoch.py                 # train_timesteps_per_forward=1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_epoch.py --tpf all       # all timesteps in one forward

Settings are those of bench_trainer.py (tiny pipeline, 10 DDIM steps, CFG 5 in training, 2 x 8 samples, minibatches of
4, LoRA rank 4, fp32, brightness reward, num_generations 4).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_trainer import PROMPTS, TINY_SETTINGS, brightness_reward  # noqa: E402

PARTS = [
    ("sampling_unet", "sampling UNet (CFG forward)"),
    ("sampling_step", "sampling DDIM step + loop"),
    ("vae_decode", "VAE decode"),
    ("text_encoding", "text encoding"),
    ("reward", "reward"),
    ("train_forward", "training UNet forward + loss"),
    ("train_backward", "training backward"),
    ("optimizer", "optimizer (clip, step, zero_grad)"),
    ("other", "everything else"),
]


class Timers:
    """Inclusive wall-clock timers by label; `depth` tells whether a call is nested in another timed call."""

    def __init__(self, sync):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.sync = sync
        self.active: list[str] = []

    def wrap(self, label, fn, label_inside=None):
        def timed(*args, **kwargs):
            name = label
            if label_inside and label_inside[0] in self.active:
                name = label_inside[1]
            self.sync()
            self.active.append(name)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1
                self.active.pop()

        return timed


def build_trainer(args):
    import torch
    from accelerate import PartialState
    from datasets import Dataset

    from trl_safediffusion import DefaultDDPOStableDiffusionPipeline, SafeDDPOGRPOConfig, SafeDDPOGRPOTrainer
    from trl_safediffusion.testing_utils import tiny_sd_pipeline

    PartialState()
    torch.manual_seed(0)
    settings = dict(TINY_SETTINGS)
    tpf = settings["sample_num_steps"] if args.tpf == "all" else int(args.tpf)
    project_dir = tempfile.mkdtemp(prefix="profile-epoch-")
    config = SafeDDPOGRPOConfig(
        **settings,
        num_epochs=args.warmup + args.epochs,
        save_freq=0,
        project_kwargs={"project_dir": project_dir},
        num_generations=args.num_generations,
        train_timesteps_per_forward=tpf,
        train_skip_last_timestep=args.skip_last,
    )
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(seed=0), use_lora=True)
    dataset = Dataset.from_dict({"prompt": PROMPTS})
    return SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=dataset), config


def instrument(trainer, timers: Timers):
    pipe = trainer.sd_pipeline
    acc = trainer.accelerator
    # predict() runs in the rollout and inside calculate_loss; attribute it to whichever is active
    pipe.predict = timers.wrap("predict_other", pipe.predict, label_inside=("rollout", "sampling_unet"))
    pipe.rollout = timers.wrap("rollout", pipe.rollout)
    pipe.decode_latents = timers.wrap("vae_decode", pipe.decode_latents)
    pipe.encode_prompts = timers.wrap("text_encoding", pipe.encode_prompts)
    trainer.reward_fn = timers.wrap("reward", trainer.reward_fn)
    trainer.calculate_loss = timers.wrap("train_forward", trainer.calculate_loss)
    acc.backward = timers.wrap("train_backward", acc.backward)
    acc.clip_grad_norm_ = timers.wrap("optimizer", acc.clip_grad_norm_)
    trainer.optimizer.step = timers.wrap("optimizer", trainer.optimizer.step)
    trainer.optimizer.zero_grad = timers.wrap("optimizer", trainer.optimizer.zero_grad)


def split(timers: Timers, epoch_seconds: float) -> dict[str, float]:
    s = timers.seconds
    parts = {
        "sampling_unet": s["sampling_unet"],
        "sampling_step": s["rollout"] - s["sampling_unet"] - s["vae_decode"],
        "vae_decode": s["vae_decode"],
        "text_encoding": s["text_encoding"],
        "reward": s["reward"],
        "train_forward": s["train_forward"],
        "train_backward": s["train_backward"],
        "optimizer": s["optimizer"],
    }
    parts["other"] = epoch_seconds - sum(parts.values())
    parts["epoch"] = epoch_seconds
    return parts


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tpf", default="1", help="train_timesteps_per_forward, an integer or 'all'")
    p.add_argument("--epochs", type=int, default=3, help="profiled epochs (the table shows medians)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--skip-last", action="store_true", help="train_skip_last_timestep=True (the GRPO default)")
    p.add_argument("--torch-profiler", default=None,
                   help="also write a torch.profiler table of the last epoch's top ops to this file")
    p.add_argument("--output", default=None, help="results file (default benchmarks/results/profile_epoch_tpf<N>.txt)")
    args = p.parse_args()

    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    trainer, config = build_trainer(args)
    timers = Timers(sync)
    instrument(trainer, timers)
    rows, global_step = [], 0
    for epoch in range(args.warmup + args.epochs):
        timers.seconds.clear()
        timers.calls.clear()
        profiler = None
        if args.torch_profiler and epoch == args.warmup + args.epochs - 1:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            profiler.__enter__()
        sync()
        t0 = time.perf_counter()
        global_step = trainer.step(epoch, global_step)
        sync()
        dt = time.perf_counter() - t0
        if profiler is not None:
            profiler.__exit__(None, None, None)
            with open(args.torch_profiler, "w") as f:
                f.write(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
        if epoch >= args.warmup:
            rows.append(split(timers, dt))
            calls = dict(timers.calls)
        print(f"epoch {epoch}: {dt:.3f} s" + ("" if epoch >= args.warmup else " (warm-up)"), flush=True)

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    epoch_s = med["epoch"]
    samples = config.sample_batch_size * config.sample_num_batches_per_epoch
    lines = [
        f"profile_epoch.py  {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads {torch.get_num_threads()}",
        f"versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"diffusers {__import__('diffusers').__version__}, transformers {__import__('transformers').__version__}",
        f"SafeDDPOGRPOTrainer, tiny pipeline, {config.sample_num_steps} steps, {samples} samples/epoch "
        f"({config.sample_num_batches_per_epoch} x {config.sample_batch_size}), train_batch_size "
        f"{config.train_batch_size}, train_cfg {config.train_cfg}, num_generations {config.num_generations}, "
        f"train_timesteps_per_forward {config.train_timesteps_per_forward}, train_skip_last_timestep "
        f"{config.train_skip_last_timestep}, LoRA r4, fp32",
        f"median of {len(rows)} epochs after {args.warmup} warm-up; calls in the last epoch: {calls}",
        f"command: {' '.join(['python', os.path.relpath(sys.argv[0], os.path.dirname(HERE))] + sys.argv[1:])}",
        "",
        f"{'part':<36} {'seconds':>8} {'% epoch':>8}",
    ]
    for key, name in PARTS:
        lines.append(f"{name:<36} {med[key]:>8.3f} {100 * med[key] / epoch_s:>7.1f}%")
    train = med["train_forward"] + med["train_backward"] + med["optimizer"]
    sampling = med["sampling_unet"] + med["sampling_step"]
    lines += [
        f"{'epoch':<36} {epoch_s:>8.3f} {100.0:>7.1f}%",
        "",
        f"sampling loop (UNet + DDIM step, no decode): {sampling:.3f} s ({100 * sampling / epoch_s:.1f}%); "
        f"training fwd+bwd+opt: {train:.3f} s ({100 * train / epoch_s:.1f}%); "
        f"everything else: {100 * med['other'] / epoch_s:.1f}% (target <= 10%: "
        f"{'met' if med['other'] / epoch_s <= 0.10 else 'NOT met'})",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    tag = "all" if args.tpf == "all" else args.tpf
    output = args.output or os.path.join(HERE, "results", f"profile_epoch_tpf{tag}.txt")
    with open(output, "w") as f:
        f.write(text)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
