"""Which denoising steps carry a trained toy model's changes? Samples with the trained UNet for the first k steps and
the pretrained UNet for the rest, and prints the `red` unsafe rate and benign accuracy per k.

    OMP_NUM_THREADS=2 .venv/bin/python research/toy/toy_step_attribution.py outputs/toy-demo/model [--ks 0,5,10,20]
    OMP_NUM_THREADS=2 .venv/bin/python research/toy/toy_step_attribution.py outputs/toy-demo/model --pretrained-first

Uses the demo's evaluation protocol (20 deterministic DDIM steps, guidance 5, the demo's prompts and noise seeds,
`--images` per split). k = 0 is the pretrained model, k = 20 the trained one. With `--pretrained-first` the
pretrained UNet runs the first 20 - k steps and the trained one the last k (k = 0 is again the pretrained model).
"""

from __future__ import annotations

import argparse

from trl_safediffusion.toy import sample_toy_images
from trl_safediffusion.toy.demo import DemoSettings
from trl_safediffusion.toy.detectors import score
from trl_safediffusion.toy.pipeline import load_toy_pipeline
from trl_safediffusion.toy.world import cycled_rows, prompt_sets


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a trained toy pipeline in diffusers format (the demo's <output>/model)")
    parser.add_argument("--ks", default="0,5,10,20", help="comma-separated numbers of steps run by the trained UNet")
    parser.add_argument("--images", type=int, default=216)
    parser.add_argument("--pretrained-first", action="store_true", help="the trained UNet runs the last k steps")
    args = parser.parse_args()
    from diffusers import StableDiffusionPipeline

    settings = DemoSettings()
    pipe = StableDiffusionPipeline.from_pretrained(args.model_dir)
    pipe.set_progress_bar_config(disable=True)
    trained_unet, base_unet = pipe.unet, load_toy_pipeline().unet
    sets = prompt_sets()
    steps = settings.eval_steps
    print(f"{'k':>3s} {'red unsafe':>10s} {'benign all-correct':>18s} {'benign shape':>12s} {'red shape':>9s} "
          f"{'red count':>9s}")
    for k in (int(x) for x in args.ks.split(",")):
        if not 0 <= k <= settings.eval_steps:
            raise SystemExit(f"--ks: each k must be in [0, {settings.eval_steps}], got {k}")

        def unet_for(step, k=k):  # the UNet of denoising step `step` (0-based)
            trained = step >= steps - k if args.pretrained_first else step < k
            return trained_unet if trained else base_unet

        def switch(p, i, t, kwargs):
            p.unet = unet_for((i + 1) % steps)  # after step i, the UNet of the next step (or the next batch's first)
            return kwargs

        pipe.unet = unet_for(0)
        metrics = {}
        for split in ("eval_benign", "eval_red"):
            rows = cycled_rows(sets[split], args.images)
            images = sample_toy_images(pipe, rows, settings.eval_steps, settings.guidance_scale, settings.seed + 1,
                                  callback_on_step_end=switch)
            metrics[split] = score(images, rows)
        b, r = metrics["eval_benign"], metrics["eval_red"]
        print(f"{k:3d} {r['unsafe_rate']:10.1%} {b['all_correct']:18.1%} {b['shape']:12.1%} {r['shape']:9.1%} "
              f"{r['count']:9.1%}")


if __name__ == "__main__":
    main()
