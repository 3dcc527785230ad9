"""Shape and count accuracy of the shipped toy pipeline per colour word, under the demo's evaluation protocol.

    OMP_NUM_THREADS=2 .venv/bin/python research/toy/toy_colour_accuracy.py [--benign-images 450] [--red-images 216]
    OMP_NUM_THREADS=2 .venv/bin/python research/toy/toy_colour_accuracy.py --swap [--red-images 216]
    OMP_NUM_THREADS=2 .venv/bin/python research/toy/toy_colour_accuracy.py --vae [--drawn-images 270]

Samples the demo's benign and `red` evaluation prompts (20 deterministic DDIM steps, guidance 5, the demo's noise
seeds) and prints shape and count accuracy per colour word. docs/research/toy_world_trials.md uses it for the floor of red-family
shape accuracy: a model that drew red-family prompts in a safe colour, as well as it draws that colour, would score
the safe colours' accuracy, not red's.

With `--swap` it measures that floor on the demo's own red-family evaluation instead: the `red`, `crimson` and
`scarlet` evaluation prompts with the demo's noise seeds (each split seeded as the demo seeds it), drawn as they are
and then with the colour word replaced by each safe colour, and prints the red-family shape and count accuracy the
demo would report for each (the mean over the three words, as in `metrics.json`).

With `--vae` it asks how much of that is the autoencoder's: for each colour word it draws `--drawn-images` images
(every shape and count, the same layouts for every colour), passes them through the pipeline's VAE (encode, take the
posterior mean, decode) and prints the detectors' shape and count accuracy on the reconstructions, and the mean
latent norm of the object pixels: the distance, in the UNet's (scaled) latent space, between an object of that colour
and the background it is drawn on. A colour with a small norm is a faint signal for the UNet to draw.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from trl_safediffusion.toy import sample_toy_images
from trl_safediffusion.toy.demo import DemoSettings
from trl_safediffusion.toy.detectors import judge
from trl_safediffusion.toy.pipeline import load_toy_pipeline
from trl_safediffusion.toy.world import (
    BACKGROUND_RGB,
    COLOUR_WORDS,
    COUNT_WORDS,
    SAFE_COLOUR_WORDS,
    SHAPES,
    ShapeSpec,
    cycled_rows,
    draw,
    prompt_row,
    prompt_sets,
    spec_from_row,
)


def swap_floor(pipe, settings: DemoSettings, images_per_split: int) -> None:
    """Red-family shape and count accuracy of `pipe` on the demo's red-family prompts and noise, per colour word."""
    sets = prompt_sets()
    print(f"{'drawn as':8s} {'shape':>7s} {'count':>7s}")
    for colour in ("as asked",) + SAFE_COLOUR_WORDS:
        shape, count = [], []
        for split in ("eval_red", "eval_crimson", "eval_scarlet"):
            rows = cycled_rows(sets[split], images_per_split)
            if colour != "as asked":
                rows = [prompt_row(spec_from_row({**row, "colour_word": colour})) for row in rows]
            judged = judge(sample_toy_images(pipe, rows, settings.eval_steps, settings.guidance_scale, settings.seed + 1), rows)
            shape.append(judged["shape"].mean())
            count.append(judged["count"].mean())
        print(f"{colour:8s} {np.mean(shape):7.1%} {np.mean(count):7.1%}")


@torch.no_grad()
def vae_round_trip(pipe, images_per_colour: int) -> None:
    """Detector accuracy on VAE reconstructions of drawn images, and the latent contrast of objects, per colour."""
    vae = pipe.vae

    def encode(uint8: np.ndarray) -> torch.Tensor:  # (B, H, W, 3) uint8 -> scaled latents (B, 4, h, w)
        x = torch.from_numpy(uint8).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return vae.encode(x.to(vae.dtype)).latent_dist.mean * vae.config.scaling_factor

    blank = np.tile(np.asarray(BACKGROUND_RGB, dtype=np.uint8), (1, 32, 32, 1))
    background = encode(blank).mean(dim=(0, 2, 3))  # (4,) the background's latent
    layouts = [(shape, count) for shape in SHAPES for count in COUNT_WORDS]
    print(f"{'colour':8s} {'shape':>7s} {'count':>7s} {'object latent norm':>19s}")
    for colour in COLOUR_WORDS:
        specs = [ShapeSpec(colour, *layouts[k % len(layouts)]) for k in range(images_per_colour)]
        # the layout of image k depends only on k, so every colour is drawn in the same places
        drawn = np.stack([draw(spec, np.random.default_rng(k)) for k, spec in enumerate(specs)])
        latents = encode(drawn)
        decoded = (vae.decode(latents / vae.config.scaling_factor).sample.float() / 2 + 0.5).clamp(0, 1)
        judged = judge(decoded, [prompt_row(spec) for spec in specs])
        # object pixels of the latent grid: where the drawn image, pooled to the latent resolution, is mostly object
        is_object = np.any(np.abs(drawn.astype(np.int16) - np.asarray(BACKGROUND_RGB)) > 40, axis=-1)
        f = drawn.shape[1] // latents.shape[-1]
        pooled = is_object.reshape(len(drawn), latents.shape[-2], f, latents.shape[-1], f).mean(axis=(2, 4)) > 0.75
        gap = (latents.float() - background[None, :, None, None]).norm(dim=1).numpy()  # (B, h, w)
        print(f"{colour:8s} {judged['shape'].mean():7.1%} {judged['count'].mean():7.1%} {gap[pooled].mean():19.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benign-images", type=int, default=450)
    parser.add_argument("--red-images", type=int, default=216)
    parser.add_argument("--pipeline-path", default=None, help="a toy pipeline folder (default: the shipped one)")
    parser.add_argument("--swap", action="store_true", help="red-family prompts drawn in each safe colour (see above)")
    parser.add_argument("--vae", action="store_true", help="VAE round trip of drawn images per colour (see above)")
    parser.add_argument("--drawn-images", type=int, default=270, help="drawn images per colour for --vae")
    args = parser.parse_args()
    settings = DemoSettings()
    pipe = load_toy_pipeline(path=args.pipeline_path)
    pipe.set_progress_bar_config(disable=True)
    if args.swap:
        return swap_floor(pipe, settings, args.red_images)
    if args.vae:
        return vae_round_trip(pipe, args.drawn_images)
    sets = prompt_sets()
    rows = cycled_rows(sets["eval_benign"], args.benign_images) + cycled_rows(sets["eval_red"], args.red_images)
    images = sample_toy_images(pipe, rows, settings.eval_steps, settings.guidance_scale, settings.seed + 1)
    judged = judge(images, rows)
    shape, count = defaultdict(list), defaultdict(list)
    for i, row in enumerate(rows):
        shape[row["colour_word"]].append(judged["shape"][i])
        count[row["colour_word"]].append(judged["count"][i])
    print(f"{'colour':8s} {'images':>6s} {'shape':>7s} {'count':>7s}")
    for word in sorted(shape, key=lambda w: (w == "red", w)):
        print(f"{word:8s} {len(shape[word]):6d} {np.mean(shape[word]):7.1%} {np.mean(count[word]):7.1%}")
    safe = [w for w in shape if w != "red"]
    print(f"{'safe avg':8s} {'':6s} {np.mean([np.mean(shape[w]) for w in safe]):7.1%} "
          f"{np.mean([np.mean(count[w]) for w in safe]):7.1%}")


if __name__ == "__main__":
    main()
