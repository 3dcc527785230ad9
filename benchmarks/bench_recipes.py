"""A family's two recipes side by side: the paper's (every step stochastic and trained) and its fast one (a short
stochastic window). Seconds per epoch, samples per second, peak memory and model forward-equivalents per sample.

Each recipe file (examples/recipes/safediffusion_r1_<family>.yaml and safediffusion_r1_<family>_fast.yaml) is read by
the CLI's own parser (`trl_safediffusion.cli.parse_train_args`), then `--set` overrides it, and it trains through
`SafeDDPOGRPOTrainer` in a fresh subprocess on a random-weight pipeline, so that nothing is downloaded:

- `--size full` (SD 1.5 only): SD v1.5's architecture (UNet (320, 640, 1280, 1280), about 860M parameters; VAE;
  CLIP ViT-L/14 text tower) at `--resolution`, with the recipe's reward model built with random weights (open_clip
  `clip_model`, ViT-H-14 in the recipes) unless `--reward brightness`. This is the measurement for a GPU;
- `--size tiny` (every family): the tiny pipelines of `trl_safediffusion.testing_utils` and the brightness reward, for
  the counts (tests/test_bench_recipes.py checks them against docs/efficiency.md's table).

The first epoch of every run is a warm-up that is not timed. Forward-equivalents are counted on the denoiser over the
timed epochs (forward 1, forward + backward 3; a classifier-free-guidance row counts as a row). Peak memory: the
worker's peak RSS and, on CUDA, `torch.cuda.max_memory_allocated()` / `max_memory_reserved()` over the whole run.

    # SD v1.5 size at 512 px on a GPU, the recipes' own batch sizes (per process)
    .venv/bin/python benchmarks/bench_recipes.py --size full --epochs 2
    # the same architecture on this CPU machine: 64 px, 2 samples per epoch, brightness reward, fp32
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_recipes.py --size full --resolution 64 --reward brightness \\
        --set sample_batch_size=2 sample_num_batches_per_epoch=1 num_generations=2 train_batch_size=2 \\
        mixed_precision=no --epochs 1
    # tiny models, every family (seconds)
    .venv/bin/python benchmarks/bench_recipes.py --size tiny --family sdxl_lora --epochs 1 --out /tmp/b.json

Writes benchmarks/results/bench_recipes[_<size>_<family>].json (or `--out`) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
FAMILIES = ("sd15", "sdxl_lora", "sd35_medium_lora", "flux_dev_lora")
TINY_BUILDERS = {"sd15": "tiny_sd_pipeline", "sdxl_lora": "tiny_sdxl_pipeline", "sd35_medium_lora": "tiny_sd3_pipeline",
                 "flux_dev_lora": "tiny_flux_pipeline"}
# the tiny pipelines' own sizes (the recipes' 512-1024 px would run the tiny VAEs at full resolution) and the tiny
# T5's prompt length
TINY_OVERRIDES = {"sd15": {}, "sdxl_lora": {"sample_height": 16, "sample_width": 16},
                  "sd35_medium_lora": {"sample_height": 16, "sample_width": 16},
                  "flux_dev_lora": {"sample_height": 16, "sample_width": 16}}
PROMPTS = [("a photo of a cat on a sofa", False), ("a nude figure", True), ("a red bicycle by a wall", False),
           ("a violent scene", True)]


def recipe_paths(family: str) -> dict[str, str]:
    folder = os.path.join(REPO, "examples", "recipes")
    return {"paper": os.path.join(folder, f"safediffusion_r1_{family}.yaml"),
            "fast": os.path.join(folder, f"safediffusion_r1_{family}_fast.yaml")}


# ====================================================================================================== worker
def build_reward(kind: str, reward_args, device: str):
    from trl_safediffusion.cli import brightness
    from trl_safediffusion.rewards.clip_steering import CLIPSteeringReward

    if kind == "brightness":
        return brightness
    # the recipe's reward architecture with random weights: the same compute, no download
    return CLIPSteeringReward.from_open_clip(reward_args.clip_model, pretrained=None, device=device,
                                             anchors=reward_args.anchors, alpha=reward_args.alpha,
                                             mode=reward_args.steering_mode)


def run_worker(args) -> dict:
    import torch

    sys.path.insert(0, HERE)
    from time_to_target import ForwardCounter

    from trl_safediffusion import load_ddpo_pipeline
    from trl_safediffusion.cli import load_train_prompts, parse_train_args
    from trl_safediffusion.grpo_trainer import SafeDDPOGRPOTrainer
    from trl_safediffusion.script_args import FAMILY_OPTIONS

    logdir = tempfile.mkdtemp(prefix="logs-", dir=os.getcwd())  # the driver's temporary folder, removed after
    argv = ["--config", args.recipe, "--pretrained_model", args.pipeline, "--dataset", args.prompts,
            "--logdir", logdir, "--output_dir", os.path.join(logdir, "out"), "--num_epochs", str(args.epochs + 1),
            "--save_freq", "0", "--log_images", "false"]
    for item in args.set:
        key, value = item.split("=", 1)
        argv += [f"--{key}", value]
    config, model_args, data_args, reward_args, _ = parse_train_args(argv)
    config = dataclasses.replace(config, log_with=None, prompt_column="prompt", label_column="unsafe")
    dataset = load_train_prompts(data_args, "prompt")
    options = {name: getattr(model_args, name) for name in FAMILY_OPTIONS if getattr(model_args, name) is not None}
    pipe = load_ddpo_pipeline(args.pipeline, use_lora=model_args.use_lora, lora_rank=model_args.lora_rank,
                              lora_alpha=model_args.lora_alpha, **options)
    cuda = torch.cuda.is_available()
    reward = build_reward(args.reward, reward_args, "cuda" if cuda else "cpu")
    trainer = SafeDDPOGRPOTrainer(config, reward, pipe, train_dataset=dataset)
    counter = ForwardCounter()
    counter.attach(pipe.unet)
    if getattr(trainer, "ref_unet", None) is not None:
        counter.attach(trainer.ref_unet)
    trainer.train(1)  # warm-up: not timed, not counted
    if cuda:
        torch.cuda.synchronize()
    counter.active = True
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train(args.epochs + 1)
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    samples = config.sample_batch_size * config.sample_num_batches_per_epoch * args.epochs
    trainable = sum(p.numel() for p in trainer._trainable_params)
    return {
        "seconds_per_epoch": seconds / args.epochs,
        "cpu_seconds_per_epoch": cpu_seconds / args.epochs,
        "samples_per_second": samples / seconds,
        "samples_per_epoch": samples // args.epochs,
        "forward_equivalents_per_sample": counter.forward_equivalents / samples,
        "rows_without_grad_per_sample": counter.rows_without_grad / samples,
        "rows_with_grad_per_sample": counter.rows_with_grad / samples,
        "trainable_parameters": trainable,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "cuda_peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "cuda_peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "settings": {k: getattr(config, k) for k in (
            "sample_num_steps", "sample_sde_window", "sample_sde_window_size", "sample_tail_steps",
            "sample_guidance_scale", "train_cfg", "train_timestep_fraction", "train_skip_last_timestep",
            "train_timesteps_per_forward", "sample_batch_size", "sample_num_batches_per_epoch", "num_generations",
            "train_batch_size", "mixed_precision", "beta") if hasattr(config, k)},
    }


# ====================================================================================================== driver
def write_pipeline(folder: str, family: str, size: str, resolution: int) -> None:
    if size == "full":
        from bench_trainer import write_pipeline as write_sd

        write_sd(folder, sd15=True, resolution=resolution)
        return
    from trl_safediffusion import testing_utils

    getattr(testing_utils, TINY_BUILDERS[family])(seed=0).save_pretrained(folder)


def write_prompts(path: str) -> None:
    with open(path, "w") as f:
        for prompt, unsafe in PROMPTS:
            f.write(json.dumps({"prompt": prompt, "unsafe": unsafe}) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="sd15", choices=FAMILIES)
    p.add_argument("--size", default="full", choices=("full", "tiny"))
    p.add_argument("--resolution", type=int, default=512, help="--size full: the pipeline's resolution in pixels")
    p.add_argument("--reward", default=None, choices=("clip", "brightness"),
                   help="default: clip (random weights) at --size full, brightness at --size tiny")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per recipe, after one warm-up epoch")
    p.add_argument("--recipes", default="paper,fast", help="which of the family's recipes, in this order")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override a recipe field on both sides, e.g. sample_batch_size=2 (CLI syntax for the value)")
    p.add_argument("--pipeline", default=None, help="a pipeline folder to reuse (written if missing)")
    p.add_argument("--out", default=None, help="results .json (default benchmarks/results/bench_recipes_<size>_<family>"
                   ".json); a .txt table is written beside it")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--recipe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--prompts", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.size == "full" and args.family != "sd15":
        p.error(f"--size full builds SD v1.5's architecture only; use --family sd15 or --size tiny, not "
                f"--family {args.family}")
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    for item in args.set:
        if "=" not in item:
            p.error(f"--set takes FIELD=VALUE pairs, got {item!r}")
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in ("paper", "fast")]
    if unknown:
        p.error(f"--recipes takes paper and/or fast, got {','.join(unknown)}")
    args.recipes = recipes
    if args.reward is None:
        args.reward = "clip" if args.size == "full" else "brightness"
    return args


def summarise(results: dict) -> str:
    lines = [f"{'recipe':6s} {'s/epoch':>9s} {'samples/s':>10s} {'fwd-eq/sample':>14s} {'peak RSS GiB':>13s} "
             f"{'CUDA alloc GiB':>15s}"]
    for name, r in results.items():
        cuda = "-" if r["cuda_peak_allocated_gib"] is None else f"{r['cuda_peak_allocated_gib']:.2f}"
        lines.append(f"{name:6s} {r['seconds_per_epoch']:9.2f} {r['samples_per_second']:10.3f} "
                     f"{r['forward_equivalents_per_sample']:14.1f} {r['peak_rss_gib']:13.2f} {cuda:>15s}")
    if "paper" in results and "fast" in results:
        p, f = results["paper"], results["fast"]
        lines.append(f"paper / fast: {p['seconds_per_epoch'] / f['seconds_per_epoch']:.2f}x the seconds per epoch, "
                     f"{p['forward_equivalents_per_sample'] / f['forward_equivalents_per_sample']:.2f}x the "
                     "forward-equivalents per sample")
    return "\n".join(lines)


def run_recipes(args, tmp: str) -> tuple[dict, list[str]]:
    pipeline = args.pipeline or os.path.join(tmp, "pipeline")
    if not os.path.isfile(os.path.join(pipeline, "model_index.json")):
        print(f"writing the {args.size} {args.family} pipeline to {pipeline}", flush=True)
        write_pipeline(pipeline, args.family, args.size, args.resolution)
    prompts = os.path.join(tmp, "prompts.jsonl")
    write_prompts(prompts)
    overrides = [f"{k}={v}" for k, v in TINY_OVERRIDES[args.family].items()] if args.size == "tiny" else []
    overrides += args.set
    results = {}
    for name in args.recipes:
        recipe = recipe_paths(args.family)[name]
        result = os.path.join(tmp, f"{name}.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--recipe", recipe, "--pipeline", pipeline,
               "--prompts", prompts, "--result", result, "--epochs", str(args.epochs), "--reward", args.reward,
               "--family", args.family, "--size", args.size, "--set", *overrides]
        print(f"{name}: {os.path.relpath(recipe, REPO)}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp,
                              env=dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore"))
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
        with open(result) as f:
            results[name] = json.load(f)
    return results, overrides


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args)
        with open(args.result, "w") as f:
            json.dump(result, f)
        return result
    sys.path.insert(0, HERE)
    with tempfile.TemporaryDirectory(prefix="bench-recipes-") as tmp:  # the pipeline (4 GB at full size) and logs
        results, overrides = run_recipes(args, tmp)
    table = summarise(results)
    print(table)
    record = {"date": datetime.date.today().isoformat(), "family": args.family, "size": args.size,
              "resolution": args.resolution if args.size == "full" else None, "reward": args.reward,
              "epochs": args.epochs, "overrides": overrides, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS"), "results": results}
    out = args.out or os.path.join(RESULTS, f"bench_recipes_{args.size}_{args.family}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(record, f, indent=2)
    with open(os.path.splitext(out)[0] + ".txt", "w") as f:
        f.write(f"{record['date']} {args.size} {args.family} ({' '.join(overrides) or 'the recipes as shipped'}), "
                f"{args.reward} reward, {args.epochs} timed epoch(s), device {next(iter(results.values()))['device']}"
                f"\n{table}\n")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
