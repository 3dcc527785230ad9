"""Seconds per epoch, samples per second and peak memory: trl-safediffusion versus TRL v0.23.1's DDPOTrainer.

Both sides train the same tiny Stable Diffusion pipeline (written once to disk with
`trl_safediffusion.testing_utils.tiny_sd_pipeline(seed=0).save_pretrained(...)`) with identical settings: DDIM 10 steps, eta 1,
CFG 5 in sampling and training, 2 sampling batches of 8, training minibatches of 4, LoRA rank 4 on the attention
projections, fp32, a brightness reward and the same prompts. Each run is a fresh subprocess (our venv, or the peer venv
with trl==0.23.1, transformers==4.57.6, diffusers==0.39.0 and the same torch); runs alternate between the
configurations round after round (the order is reversed every other round), the first epoch of every run is a warm-up
that is not timed, and peak RSS is read from the child's rusage (`os.wait4`, as /usr/bin/time does).

    # once: create the peer venv (benchmarks/.venv-trl023) and the shared pipeline folder
    .venv/bin/python benchmarks/bench_trainer.py --setup
    # the comparison (OMP_NUM_THREADS=1 on both sides unless --threads says otherwise)
    .venv/bin/python benchmarks/bench_trainer.py --rounds 4 --epochs 4
    # SD v1.5-size UNet (random weights, 512px, LoRA, bf16) on a GPU machine: peak GPU memory and epoch time
    .venv/bin/python benchmarks/bench_trainer.py --setup --sd15-size --rounds 1 --epochs 2

Configurations (`--configs`, comma separated):
    trl-ddpo          TRL v0.23.1 DDPOTrainer + DefaultDDPOStableDiffusionPipeline (the peer)
    ours-default      our DDPOTrainer with its default configuration (train_timesteps_per_forward="auto")
    ours-ddpo         our DDPOTrainer, train_timesteps_per_forward=1 (TRL-equivalent, apples to apples)
    ours-ddpo-tpf     our DDPOTrainer, all trained timesteps stacked into one UNet forward (same gradient)
    ours-grpo         SafeDDPOGRPOTrainer, num_generations=4, train_timesteps_per_forward=1
    ours-grpo-tpf     SafeDDPOGRPOTrainer, num_generations=4, all trained timesteps in one forward

The worker half of this file (`--worker`) runs inside either venv and imports nothing from this repository when it
runs the peer.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_PEER_VENV = os.path.join(HERE, ".venv-trl023")
DEFAULT_OUR_PYTHON = os.path.join(REPO, ".venv", "bin", "python")
RESULTS = os.path.join(HERE, "results")
PEER_REQUIREMENTS = [
    "trl==0.23.1",
    "transformers==4.57.6",
    "diffusers==0.39.0",
    "torch==2.14.1",
    "peft",
    "accelerate",
]

PROMPTS = ["cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird", "sheep", "deer", "cow", "goat"]

# Settings shared by every configuration: DDPOConfig field names, valid for TRL v0.23.1 and for us.
TINY_SETTINGS = {
    "sample_num_steps": 10,
    "sample_eta": 1.0,
    "sample_guidance_scale": 5.0,
    "sample_batch_size": 8,
    "sample_num_batches_per_epoch": 2,
    "train_batch_size": 4,
    "train_gradient_accumulation_steps": 1,
    "train_num_inner_epochs": 1,
    "train_cfg": True,
    "train_learning_rate": 3e-4,
    "train_adv_clip_max": 5.0,
    "train_clip_range": 1e-4,
    "train_timestep_fraction": 1.0,
    "train_max_grad_norm": 1.0,
    "mixed_precision": "no",
    "allow_tf32": True,
    "seed": 0,
    "log_with": None,
    "per_prompt_stat_tracking": False,
    "async_reward_computation": False,
}
# SD v1.5 size: what a GPU run of the paper's recipe at LoRA scale looks like (fewer steps to fit the device budget).
SD15_SETTINGS = dict(TINY_SETTINGS, sample_num_steps=20, sample_batch_size=8, train_batch_size=4,
                     mixed_precision="bf16")

CONFIGS = {
    "trl-ddpo": {"impl": "trl", "trainer": "ddpo", "tpf": 1},
    "ours-default": {"impl": "ours", "trainer": "ddpo", "tpf": "default"},
    "ours-ddpo": {"impl": "ours", "trainer": "ddpo", "tpf": 1},
    "ours-ddpo-tpf": {"impl": "ours", "trainer": "ddpo", "tpf": "all"},
    "ours-grpo": {"impl": "ours", "trainer": "grpo", "tpf": 1},
    "ours-grpo-tpf": {"impl": "ours", "trainer": "grpo", "tpf": "all"},
}
PEER = "trl-ddpo"


# ====================================================================== worker (runs inside either venv)
def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "trl", "peft", "accelerate", "trl-safediffusion"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def brightness_reward(images, prompts, metadata):
    """Mean pixel value of each image (B, 3, H, W) in [0, 1]: the same cheap reward on both sides."""
    return images.float().mean(dim=(1, 2, 3)), {}


def run_worker(args) -> dict:
    import random

    import torch
    from accelerate import PartialState

    # TRL v0.23.1 logs through accelerate's logger before its Accelerator exists, which raises without a state.
    PartialState()
    rss_import = _rss_mib()
    settings = dict(SD15_SETTINGS if args.sd15_size else TINY_SETTINGS)
    settings.update(json.loads(args.overrides))
    tpf = {"all": settings["sample_num_steps"], "default": "auto"}.get(args.tpf) or int(args.tpf)
    project_dir = tempfile.mkdtemp(prefix=f"bench-{args.impl}-{args.trainer}-")
    common = dict(settings, num_epochs=args.warmup + args.epochs, save_freq=10**6,
                  project_kwargs={"project_dir": project_dir}, logdir=project_dir)
    rng = random.Random(0)

    def prompt_fn():
        return rng.choice(PROMPTS), {}

    if args.impl == "trl":
        from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

        pipe = DefaultDDPOStableDiffusionPipeline(args.pipeline, use_lora=True)
        config = DDPOConfig(**common)
        trainer = DDPOTrainer(config, brightness_reward, prompt_fn, pipe)
    else:
        from trl_safediffusion import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

        pipe = DefaultDDPOStableDiffusionPipeline(args.pipeline, use_lora=True)
        if args.trainer == "ddpo":
            config = DDPOConfig(**{**common, "save_freq": 0}, train_timesteps_per_forward=tpf)
            trainer = DDPOTrainer(config, brightness_reward, prompt_fn, pipe)
        else:
            from datasets import Dataset

            from trl_safediffusion import SafeDDPOGRPOConfig, SafeDDPOGRPOTrainer

            config = SafeDDPOGRPOConfig(
                **{**common, "save_freq": 0},
                train_timesteps_per_forward=tpf,
                num_generations=args.num_generations,
                # the same 10 trained timesteps per sample as DDPO (the GRPO default skips the last one: 10% less work)
                train_skip_last_timestep=args.grpo_skip_last,
            )
            dataset = Dataset.from_dict({"prompt": PROMPTS})
            trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=dataset)
    rss_setup = _rss_mib()
    trainable = sum(p.numel() for p in trainer.sd_pipeline.unet.parameters() if p.requires_grad)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times, global_step = [], [], 0
    for epoch in range(args.warmup + args.epochs):
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        global_step = trainer.step(epoch, global_step)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    timed = times[args.warmup:]
    if args.impl == "ours" and tpf == "auto":  # what "auto" chose
        tpf = trainer.timesteps_per_forward
    samples = settings["sample_batch_size"] * settings["sample_num_batches_per_epoch"]
    return {
        "impl": args.impl,
        "trainer": args.trainer,
        "train_timesteps_per_forward": tpf,
        "epoch_seconds_all": times,
        "epoch_seconds": statistics.median(timed),
        "epoch_cpu_seconds_all": cpu_times,
        "epoch_cpu_seconds": statistics.median(cpu_times[args.warmup:]),
        "samples_per_epoch": samples,
        "samples_per_second": samples / statistics.median(timed),
        "trainable_parameters": trainable,
        "rss_after_import_mib": rss_import,
        "rss_after_setup_mib": rss_setup,
        "rss_end_mib": _rss_mib(),
        "cuda_peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "cuda_peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "settings": settings,
        "versions": _versions(),
    }


# ====================================================================== setup (our venv)
def write_clip_vocab_files(tokenizer_dir: str):
    """transformers 4.x's CLIPTokenizer reads vocab.json and merges.txt, which transformers 5 no longer writes."""
    from trl_safediffusion.tokenization import clip_bpe_vocab_and_merges

    vocab, merges = clip_bpe_vocab_and_merges()
    with open(os.path.join(tokenizer_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(tokenizer_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


def sd15_pipeline(resolution: int = 512):
    """A diffusers StableDiffusionPipeline with SD v1.5's architecture and random weights (nothing is downloaded).

    UNet: (320, 640, 1280, 1280), cross-attention 768, ~860M parameters; VAE: (128, 256, 512, 512); CLIP ViT-L/14
    text tower (12 layers, width 768).
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from trl_safediffusion.tokenization import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=resolution // 8, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=resolution,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                       projection_dim=768, vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu",
                       bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def prefix_text_encoder_keys(text_encoder_dir: str):
    """transformers 5 saves CLIPTextModel weights without the `text_model.` prefix and transformers 4.57 then
    initialises the whole text encoder at random (silently apart from a warning). Keys with the prefix (the Hub's
    format) load identically in both."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(text_encoder_dir, "model.safetensors")
    state = load_file(path)
    if all(k.startswith("text_model.") for k in state):
        return
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v.contiguous() for k, v in state.items()}
    save_file(state, path, metadata={"format": "pt"})


def write_pipeline(folder: str, sd15: bool, resolution: int):
    from trl_safediffusion.testing_utils import tiny_sd_pipeline

    pipe = sd15_pipeline(resolution) if sd15 else tiny_sd_pipeline(seed=0)
    pipe.save_pretrained(folder, safe_serialization=True)
    prefix_text_encoder_keys(os.path.join(folder, "text_encoder"))
    tok = os.path.join(folder, "tokenizer")
    if not (os.path.isfile(os.path.join(tok, "vocab.json")) and os.path.isfile(os.path.join(tok, "merges.txt"))):
        write_clip_vocab_files(tok)
    with open(os.path.join(folder, "WRITTEN_BY_BENCH"), "w") as f:
        json.dump({"sd15": sd15, "resolution": resolution}, f)


def peer_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def setup_peer_venv(venv: str):
    if os.path.isfile(peer_python(venv)):
        check = subprocess.run([peer_python(venv), "-c", "import trl, sys; sys.exit(trl.__version__ != '0.23.1')"])
        if check.returncode == 0:
            print(f"peer venv ready: {venv}")
            return
    print(f"creating the peer venv {venv} ({' '.join(PEER_REQUIREMENTS)})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    # never committed, whatever the repository's .gitignore says (Python >= 3.13 venvs do the same)
    with open(os.path.join(venv, ".gitignore"), "w") as f:
        f.write("*\n")
    subprocess.run([peer_python(venv), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS], check=True)


# ====================================================================== driver
def overrides(args) -> dict:
    out = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in TINY_SETTINGS:
            raise SystemExit(f"--set {item}: {key!r} is not a shared setting ({sorted(TINY_SETTINGS)})")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_child(python: str, config: str, args, pipeline: str) -> dict:
    spec = CONFIGS[config]
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    if spec["impl"] == "trl":
        env.pop("PYTHONPATH", None)  # the peer must not see this repository
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        log = os.path.join(tmp, "log.txt")
        cmd = [python, os.path.abspath(__file__), "--worker", "--impl", spec["impl"], "--trainer", spec["trainer"],
               "--tpf", str(spec["tpf"]), "--pipeline", pipeline, "--epochs", str(args.epochs),
               "--warmup", str(args.warmup), "--num-generations", str(args.num_generations), "--json-out", out]
        cmd += ["--overrides", json.dumps(overrides(args))]
        if args.sd15_size:
            cmd.append("--sd15-size")
        if args.grpo_skip_last:
            cmd.append("--grpo-skip-last")
        t0 = time.perf_counter()
        with open(log, "w") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=tmp)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            with open(log) as f:
                tail = f.read()[-4000:]
            raise RuntimeError(f"{config} failed (exit {proc.returncode}):\n{tail}")
        with open(out) as f:
            result = json.load(f)
    result["config"] = config
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    result["process_wall_seconds"] = wall
    return result


def summarise(results: list[dict], configs: list[str], rounds: int) -> tuple[str, dict]:
    by = {c: [r for r in results if r["config"] == c] for c in configs}
    summary = {}
    for c, rs in by.items():
        if not rs:
            continue
        summary[c] = {
            "epoch_seconds_median": statistics.median(r["epoch_seconds"] for r in rs),
            "epoch_seconds_runs": [round(r["epoch_seconds"], 4) for r in rs],
            "samples_per_second_median": statistics.median(r["samples_per_second"] for r in rs),
            "epoch_cpu_seconds_median": statistics.median(r["epoch_cpu_seconds"] for r in rs),
            "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in rs),
            "rss_after_import_mib_median": statistics.median(r["rss_after_import_mib"] for r in rs),
            "cuda_peak_allocated_gib": max((r["cuda_peak_allocated_gib"] or 0) for r in rs) or None,
            "trainable_parameters": rs[0]["trainable_parameters"],
            "train_timesteps_per_forward": rs[0]["train_timesteps_per_forward"],
        }
    peer = summary.get(PEER)
    lines = []
    header = (f"{'configuration':<15} {'tpf':>3} {'s/epoch':>8} {'samples/s':>9} {'x TRL':>6} "
              f"{'x TRL per round':>22} {'CPU s/epoch':>11} {'x TRL CPU':>9} {'peak RSS MiB':>12} "
              f"{'RSS import MiB':>14} {'LoRA params':>11}")
    if any(s["cuda_peak_allocated_gib"] for s in summary.values()):
        header += f" {'GPU peak GiB':>12}"
    lines.append(header)
    for c, s in summary.items():
        ratio, per_round, cpu_ratio = "", "", ""
        if peer and c != PEER:
            ratio = f"{s['samples_per_second_median'] / peer['samples_per_second_median']:.2f}"
            pr = []
            for i in range(rounds):
                ours = [r for r in by[c] if r["round"] == i]
                theirs = [r for r in by[PEER] if r["round"] == i]
                if ours and theirs:
                    pr.append(theirs[0]["epoch_seconds"] / ours[0]["epoch_seconds"])
            s["ratio_vs_trl"] = float(ratio)
            s["ratio_vs_trl_per_round"] = [round(x, 3) for x in pr]
            per_round = ",".join(f"{x:.2f}" for x in pr)
            cpu_ratio = f"{peer['epoch_cpu_seconds_median'] / s['epoch_cpu_seconds_median']:.2f}"
            s["cpu_ratio_vs_trl"] = float(cpu_ratio)
        line = (f"{c:<15} {s['train_timesteps_per_forward']:>3} {s['epoch_seconds_median']:>8.3f} "
                f"{s['samples_per_second_median']:>9.2f} {ratio:>6} {per_round:>22} "
                f"{s['epoch_cpu_seconds_median']:>11.3f} {cpu_ratio:>9} {s['peak_rss_mib_median']:>12.0f} "
                f"{s['rss_after_import_mib_median']:>14.0f} {s['trainable_parameters']:>11}")
        if s["cuda_peak_allocated_gib"]:
            line += f" {s['cuda_peak_allocated_gib']:>12.2f}"
        lines.append(line)
    lines.append("")
    lines.append("s/epoch: median wall seconds of the timed epochs (median over runs); samples/s = samples per epoch / "
                 "s/epoch; x TRL: samples/s ratio to trl-ddpo; per round: ratio to the trl-ddpo run of the same round; "
                 "CPU s/epoch: process CPU time per epoch (less sensitive to other jobs on the machine); peak RSS: "
                 "ru_maxrss of the whole child process (imports included); RSS import: after importing torch/diffusers "
                 "and before building anything.")
    lines.append("")
    lines.append("epoch seconds of each run (median of the timed epochs), in run order per configuration:")
    for c, s in summary.items():
        lines.append(f"  {c:<15} {s['epoch_seconds_runs']}")
    return "\n".join(lines), summary


def machine_description(device: str) -> str:
    cores = os.cpu_count()
    return f"{platform.machine()}, {cores} CPU cores (shared with other developers' jobs), device {device}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setup", action="store_true", help="create the peer venv and the pipeline folder when missing")
    p.add_argument("--peer-venv", default=DEFAULT_PEER_VENV)
    p.add_argument("--our-python", default=DEFAULT_OUR_PYTHON if os.path.isfile(DEFAULT_OUR_PYTHON) else sys.executable)
    p.add_argument("--pipeline", default=None, help="pipeline folder (default: ~/.cache/trl-safediffusion-bench/tiny-sd-seed0 or sd15-<res>)")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--rounds", type=int, default=4, help="0 with --setup: only set up")
    p.add_argument("--epochs", type=int, default=4, help="timed epochs per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs at the start of every run")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both sides")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--grpo-skip-last", action="store_true",
                   help="GRPO default train_skip_last_timestep=True (trains 9 of 10 steps); off: same work as DDPO")
    p.add_argument("--sd15-size", action="store_true",
                   help="random-weight SD v1.5 architecture at --sd15-resolution with LoRA and bf16 (for a GPU)")
    p.add_argument("--sd15-resolution", type=int, default=512)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override a shared setting on both sides, e.g. --set sample_num_steps=2 (JSON values)")
    p.add_argument("--output", default=None, help="results .txt (default benchmarks/results/bench_trainer[_sd15].txt)")
    # worker
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--write-pipeline", default=None, help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=["trl", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--trainer", choices=["ddpo", "grpo"], help=argparse.SUPPRESS)
    p.add_argument("--tpf", default="1", help=argparse.SUPPRESS)
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        result = run_worker(args)
        with open(args.json_out, "w") as f:
            json.dump(result, f)
        return
    if args.write_pipeline:
        write_pipeline(args.write_pipeline, args.sd15_size, args.sd15_resolution)
        return

    cache = os.path.join(os.path.expanduser("~"), ".cache", "trl-safediffusion-bench")  # outside the repository
    pipeline = args.pipeline or os.path.join(
        cache, f"sd15-{args.sd15_resolution}" if args.sd15_size else "tiny-sd-seed0"
    )
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"unknown configuration {c!r}; choose from {sorted(CONFIGS)}")
    if args.setup:
        if PEER in configs:
            setup_peer_venv(args.peer_venv)
        if not os.path.isfile(os.path.join(pipeline, "WRITTEN_BY_BENCH")):
            os.makedirs(pipeline, exist_ok=True)
            subprocess.run([args.our_python, os.path.abspath(__file__), "--write-pipeline", pipeline]
                           + (["--sd15-size", "--sd15-resolution", str(args.sd15_resolution)] if args.sd15_size else []),
                           check=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
            print(f"wrote {pipeline}")
    if not os.path.isfile(os.path.join(pipeline, "model_index.json")):
        raise SystemExit(f"no pipeline at {pipeline}: run with --setup first")
    if PEER in configs and not os.path.isfile(peer_python(args.peer_venv)):
        raise SystemExit(f"no peer venv at {args.peer_venv}: run with --setup first")

    if args.rounds == 0:
        return
    results = []
    started = datetime.datetime.now().astimezone()
    for r in range(args.rounds):
        order = configs if r % 2 == 0 else configs[::-1]
        for c in order:
            python = peer_python(args.peer_venv) if CONFIGS[c]["impl"] == "trl" else args.our_python
            res = run_child(python, c, args, pipeline)
            res["round"] = r
            results.append(res)
            print(f"round {r} {c:<15} {res['epoch_seconds']:.3f} s/epoch  {res['samples_per_second']:.2f} samples/s  "
                  f"peak RSS {res['peak_rss_mib']:.0f} MiB  epochs {[round(x, 3) for x in res['epoch_seconds_all']]}",
                  flush=True)
    table, summary = summarise(results, configs, args.rounds)
    ours_versions = next((r["versions"] for r in results if r["impl"] == "ours"), None)
    peer_versions = next((r["versions"] for r in results if r["impl"] == "trl"), None)
    settings = results[0]["settings"]
    described = (f"SD v1.5 architecture, random weights, {args.sd15_resolution}px" if args.sd15_size
                 else "tiny_sd_pipeline(seed=0), 16x16 images")
    header = [
        f"bench_trainer.py  {started.isoformat(timespec='seconds')}",
        f"machine: {machine_description(results[0]['device'])}; OMP_NUM_THREADS={args.threads} on both sides",
        f"ours: {ours_versions}",
        f"peer: {peer_versions}",
        f"pipeline: {pipeline} ({described})",
        f"settings (both sides): {settings}",
        f"ours-grpo*: num_generations={args.num_generations}, train_skip_last_timestep={args.grpo_skip_last}",
        f"{args.rounds} rounds x {len(configs)} configurations, alternating (order reversed every other round); "
        f"{args.warmup} warm-up + {args.epochs} timed epochs per run; samples/epoch = "
        f"{settings['sample_batch_size'] * settings['sample_num_batches_per_epoch']}",
        f"command: {' '.join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(REPO) else 'python'] + [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])}",
        "",
    ]
    text = "\n".join(header) + table + "\n"
    print("\n" + text)
    os.makedirs(RESULTS, exist_ok=True)
    output = args.output or os.path.join(RESULTS, "bench_trainer_sd15.txt" if args.sd15_size else "bench_trainer.txt")
    with open(output, "w") as f:
        f.write(text)
    with open(os.path.splitext(output)[0] + ".json", "w") as f:
        json.dump({"summary": summary, "runs": results}, f, indent=1, default=str)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
