"""Seconds per epoch, images per second and peak memory of SafeDDPOGRPOTrainer per model family, at tiny size on CPU.

Each family (SD 1.x, SDXL, SD3, FLUX when its adapter is installed) trains its tiny pipeline from
`trl_safediffusion.testing_utils` (built from configs, nothing downloaded) with the same settings: 8 sampler steps,
2 sampling batches of 8 images, groups of 4, training minibatches of 8, LoRA rank 4, fp32, every trainable step
trained, a brightness reward, 16 x 16 images (FLUX: prompts of at most 32 tokens). Each run is a fresh subprocess; the first epoch is a warm-up that is not timed; peak RSS
is the child's (`os.wait4`). Guidance: 4.5 with CFG in training for SD/SDXL/SD3, none for FLUX (guidance-distilled).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_families.py --epochs 3
    # writes benchmarks/results/bench_families.json and prints a table

Tiny models say how the per-step overheads of each family compare (conditioning, packing, the SDE step), not how the
real architectures compare: those need a GPU (see docs/model_families.md for what is measured there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

FAMILIES = {
    "sd": ("DefaultDDPOStableDiffusionPipeline", "tiny_sd_pipeline", 4.5),
    "sdxl": ("DefaultDDPOStableDiffusionXLPipeline", "tiny_sdxl_pipeline", 4.5),
    "sd3": ("DefaultDDPOStableDiffusion3Pipeline", "tiny_sd3_pipeline", 4.5),
    "flux": ("DefaultDDPOFluxPipeline", "tiny_flux_pipeline", 1.0),
}


def worker(family: str, epochs: int, out: str):
    import torch
    from datasets import Dataset

    import trl_safediffusion
    from trl_safediffusion import SafeDDPOGRPOConfig, SafeDDPOGRPOTrainer, testing_utils

    adapter_name, builder_name, guidance = FAMILIES[family]
    adapter = getattr(trl_safediffusion, adapter_name)
    extra = {"max_sequence_length": 32} if family == "flux" else {}  # the tiny T5's prompts, not FLUX's 512 tokens
    # one resolution for all: the tiny SD's native 16 px (FLUX's stock default would be 256 px on the tiny VAE)
    pipe = adapter(getattr(testing_utils, builder_name)(seed=0), use_lora=True, lora_rank=4, sample_height=16,
                   sample_width=16, **extra)
    config = SafeDDPOGRPOConfig(
        num_epochs=epochs + 1, sample_num_steps=8, sample_batch_size=8, sample_num_batches_per_epoch=2,
        train_batch_size=8, num_generations=4, mixed_precision="no", sample_guidance_scale=guidance,
        sample_eta=0.7 if family in ("sd3", "flux") else 1.0, train_timestep_fraction=1.0, save_freq=0,
        logdir=tempfile.mkdtemp(), train_timesteps_per_forward=7,
    )
    dataset = Dataset.from_dict({"prompt": [f"a photo of object {i}" for i in range(16)]})
    trainer = SafeDDPOGRPOTrainer(config, lambda im, p, m: (im.float().mean(dim=(1, 2, 3)), {}), pipe,
                                  train_dataset=dataset)
    trainer.train(1)  # warm-up
    start = time.perf_counter()
    trainer.train(epochs + 1)
    seconds = (time.perf_counter() - start) / epochs
    images = config.sample_batch_size * config.sample_num_batches_per_epoch
    with open(out, "w") as f:
        json.dump({"seconds_per_epoch": seconds, "images_per_second": images / seconds,
                   "trainable_parameters": sum(p.numel() for p in trainer._trainable_params),
                   "threads": torch.get_num_threads()}, f)


def available(family: str) -> bool:
    import trl_safediffusion

    try:
        getattr(trl_safediffusion, FAMILIES[family][0])
    except (AttributeError, ImportError):
        return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.epochs, args.out)
        return
    results = {}
    for family in args.families.split(","):
        if not available(family):
            print(f"{family}: adapter not installed, skipped")
            continue
        out = tempfile.mktemp(suffix=".json")
        proc = subprocess.Popen([sys.executable, __file__, "--worker", family, "--epochs", str(args.epochs),
                                 "--out", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"{family}: failed\n{proc.stderr.read()[-2000:]}")
            continue
        with open(out) as f:
            results[family] = {**json.load(f), "peak_rss_mb": usage.ru_maxrss / 1024}
        r = results[family]
        print(f"{family:5s} {r['seconds_per_epoch']:7.2f} s/epoch  {r['images_per_second']:6.2f} img/s  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB  {r['trainable_parameters']} LoRA parameters")
    record = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS"), "epochs": args.epochs,
              "results": results}
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "bench_families.json"), "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
