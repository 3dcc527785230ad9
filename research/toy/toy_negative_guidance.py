"""Could the reference model, guided away from the unsafe anchor, anchor red prompts' layout? Unsafe rate and accuracy.

    OMP_NUM_THREADS=2 .venv/bin/python research/toy/toy_negative_guidance.py [--images 144] [--anchor "red shapes"]
        [--etas 0,0.5,1,1.5]

A KL on `red` prompts to the pretrained model keeps their layouts but also keeps them red. An erasure-style target
(as in ESD, Gandikota et al. 2023) would keep the layout and drop the concept: the pretrained model's guided
prediction pushed away from the unsafe anchor,

    eps = uncond + g * (cond - uncond) - eta * g * (anchor - uncond),

with `anchor` the conditional prediction for the anchor phrase. Such a target is only useful if sampling with it
removes red while keeping shape and count. This samples the demo's `red` and benign evaluation prompts (20 DDIM
steps, eta 0, guidance 5, the demo's noise seeds) with the pretrained toy pipeline for each `--etas` value and prints
the unsafe rate, shape, count and all-correct accuracy (eta 0 is the plain pipeline), then the same for the
pipeline's own `negative_prompt=anchor` (the anchor in place of the empty prompt). docs/research/toy_world_trials.md quotes it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from trl_safediffusion.toy import noise_seed, sample_toy_images
from trl_safediffusion.toy.demo import DemoSettings
from trl_safediffusion.toy.detectors import is_unsafe, judge
from trl_safediffusion.toy.pipeline import load_toy_pipeline
from trl_safediffusion.toy.world import cycled_rows, prompt_sets


@torch.no_grad()
def sample(pipe, rows, anchor: str, eta: float, settings: DemoSettings, batch_size: int = 72) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1]; image i starts from the demo's evaluation noise of index i."""
    seed = settings.seed + 1  # the demo's evaluation seed
    images = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        n = len(chunk)
        latents = torch.cat([
            torch.randn((1, pipe.unet.config.in_channels, 8, 8), generator=torch.Generator().manual_seed(noise_seed(seed, start + i)))
            for i in range(n)
        ])
        embeds = torch.cat([pipe.encode_prompt(texts, "cpu", 1, False)[0]
                            for texts in ([""] * n, [r["prompt"] for r in chunk], [anchor] * n)])
        pipe.scheduler.set_timesteps(settings.eval_steps)
        latents = latents * pipe.scheduler.init_noise_sigma
        g = settings.guidance_scale
        for t in pipe.scheduler.timesteps:
            uncond, cond, anc = pipe.unet(torch.cat([latents] * 3), t, embeds).sample.chunk(3)
            eps = uncond + g * (cond - uncond) - eta * g * (anc - uncond)
            latents = pipe.scheduler.step(eps, t, latents).prev_sample
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        images.append((decoded.float() / 2 + 0.5).clamp(0, 1))
    return torch.cat(images)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=144, help="images per split")
    parser.add_argument("--anchor", default="red shapes")
    parser.add_argument("--etas", default="0,0.5,1,1.5")
    args = parser.parse_args()
    settings = DemoSettings()
    pipe = load_toy_pipeline()
    sets = prompt_sets()
    print(f"anchor {args.anchor!r}, {args.images} images per split")
    pipe.set_progress_bar_config(disable=True)
    print(f"{'eta':>8s} {'split':7s} {'unsafe':>7s} {'shape':>7s} {'count':>7s} {'all':>7s}")
    for eta in [float(e) for e in args.etas.split(",")] + ["negative_prompt"]:
        for split in ("eval_red", "eval_benign"):
            rows = cycled_rows(sets[split], args.images)
            if eta == "negative_prompt":
                # one batch, so the negative prompts match it (the noise of image i does not depend on the batch)
                images = sample_toy_images(pipe, rows, settings.eval_steps, settings.guidance_scale, settings.seed + 1,
                                      batch_size=len(rows), negative_prompt=[args.anchor] * len(rows))
                label = "neg."
            else:
                images = sample(pipe, rows, args.anchor, eta, settings)
                label = f"{eta:.2f}"
            judged = judge(images, rows)
            print(f"{label:>8s} {split[5:]:7s} {np.mean(is_unsafe(images)):7.1%} {judged['shape'].mean():7.1%} "
                  f"{judged['count'].mean():7.1%} {judged['all_correct'].mean():7.1%}")


if __name__ == "__main__":
    main()
