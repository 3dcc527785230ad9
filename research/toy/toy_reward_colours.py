"""What does the toy steering reward pay a `red` prompt for? Mean reward of drawn images per colour, fade and anchor set.

    OMP_NUM_THREADS=2 .venv/bin/python research/toy/toy_reward_colours.py [--images 54] [--anchor-sets all,...]

Draws `--images` images (every shape and count, the same layouts in every row) and scores them against the `red`
prompt of their shape and count ("two red triangles") with the demo's reward (toy CLIP, projection steering, alpha
0.5). Rows: the objects in each colour of the toy palette; in red, cyan and blue faded towards the background
(object colour = background + f * (colour - background)); in greys; and the empty background. Then 2, 3 and 4
objects (the toy world never has 4) for the prompts "three red <shape>s" drawn in cyan, and for "three cyan
<shape>s" drawn in cyan. Then, for each safe
anchor set in `--anchor-sets` (`+`-separated safe colours, e.g. `yellow+purple`; `all` is the toy default), the
reward of each colour. docs/research/toy_world_trials.md quotes it: GRPO only ranks the images in a group, so whatever scores above
red in this table is what the policy can be pushed towards, including faded and grey objects that the detectors do
not count.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from trl_safediffusion.toy.clip import TOY_UNSAFE_ANCHORS, toy_anchors, toy_steering_reward
from trl_safediffusion.toy.world import (
    BACKGROUND_RGB,
    COUNT_WORDS,
    IMAGE_SIZE,
    PALETTE,
    SHAPES,
    ShapeSpec,
    draw,
    paint_objects,
    prompt_row,
)


def layouts(n: int) -> list[tuple[str, int]]:
    """(shape, count) of image k: every combination in turn."""
    combos = [(shape, count) for shape in SHAPES for count in COUNT_WORDS]
    return [combos[k % len(combos)] for k in range(n)]


def drawn(colour: str, n: int) -> np.ndarray:
    """float64 (n, 32, 32, 3): image k drawn with rng seed k, so every colour has the same layouts."""
    return np.stack([draw(ShapeSpec(colour, shape, count), np.random.default_rng(k))
                     for k, (shape, count) in enumerate(layouts(n))]).astype(np.float64)


def drawn_n(colour: str, shape: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """float64 (32, 32, 3): `n` separate objects (any n, unlike `ShapeSpec`) with the toy world's sizes and gaps."""
    image = np.tile(np.asarray(BACKGROUND_RGB, dtype=np.float64), (IMAGE_SIZE, IMAGE_SIZE, 1))
    paint_objects(image, shape, PALETTE[colour], n, rng)
    return image


def mean_reward(reward, images: np.ndarray, prompts: list[str]) -> float:
    pixels = torch.from_numpy(np.clip(np.rint(images), 0, 255).astype(np.uint8)).permute(0, 3, 1, 2).float() / 255
    rewards, _ = reward(pixels, prompts, None)
    return float(torch.as_tensor(rewards).float().mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=54)
    parser.add_argument("--anchor-sets", default="all,yellow+green+blue+purple,yellow+purple,yellow")
    parser.add_argument("--clip-folder", default=None, help="a toy CLIP folder to use instead of the shipped one")
    args = parser.parse_args()
    n = args.images
    prompts = [prompt_row(ShapeSpec("red", shape, count))["prompt"] for shape, count in layouts(n)]
    background = np.asarray(BACKGROUND_RGB, dtype=np.float64)
    reward = toy_steering_reward(alpha=0.5, mode="projection", folder=args.clip_folder)

    print(f"reward of `red` prompts, toy anchors, {n} images per row")
    for colour in PALETTE:
        print(f"  {colour:22s} {mean_reward(reward, drawn(colour, n), prompts):7.3f}")
    for colour in ("red", "cyan", "blue"):
        images = drawn(colour, n)
        for f in (0.6, 0.3):
            print(f"  {colour + f' faded to {f}':22s} {mean_reward(reward, background + f * (images - background), prompts):7.3f}")
    red = drawn("red", n)
    objects = np.abs(red - background).max(axis=-1) > 40
    for grey in (60, 120, 180):
        images = red.copy()
        images[objects] = grey
        print(f"  {f'grey {grey}':22s} {mean_reward(reward, images, prompts):7.3f}")
    print(f"  {'empty background':22s} {mean_reward(reward, np.broadcast_to(background, red.shape).copy(), prompts):7.3f}")

    print("\nobjects drawn in cyan".ljust(36) + "".join(f"{k} objects".rjust(11) for k in (2, 3, 4)))
    rng = np.random.default_rng(0)
    for word in ("red", "cyan"):
        for shape in SHAPES:
            prompt = f"three {word} {shape}s"
            row = [mean_reward(reward, np.stack([drawn_n("cyan", shape, k, rng) for _ in range(n)]), [prompt] * n)
                   for k in (2, 3, 4)]
            print(f"  {prompt:33s}" + "".join(f"{r:11.3f}" for r in row))

    colours = [c for c in PALETTE if c not in ("crimson", "scarlet")]
    print("\nsafe anchors".ljust(36) + "".join(c.rjust(8) for c in colours))
    images = {c: drawn(c, n) for c in colours}
    for name in args.anchor_sets.split(","):
        safe = toy_anchors()["safe"] if name == "all" else [f"{c} shapes" for c in name.split("+")]
        steered = toy_steering_reward(anchors={"safe": safe, "unsafe": list(TOY_UNSAFE_ANCHORS)}, alpha=0.5,
                                      mode="projection", folder=args.clip_folder)
        print(name.ljust(35) + "".join(f"{mean_reward(steered, images[c], prompts):8.3f}" for c in colours))


if __name__ == "__main__":
    main()
