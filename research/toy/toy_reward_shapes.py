"""Does the toy CLIP's steering reward tell a square from a rounded square? Prints the mean reward per drawn shape.

    OMP_NUM_THREADS=2 .venv/bin/python research/toy/toy_reward_shapes.py [--images 64] [--colours blue,green] [--word red]

For each colour and count, draws `--images` images of squares, of superellipses |x|^p + |y|^p <= r^p (p = 4, 3, 2.5:
squares with ever rounder corners) and of circles, in the toy world's palette and layout rules, and scores them with
the demo's reward (toy CLIP, projection steering, alpha 0.5) against the prompt "<count> <word or colour> squares".
docs/research/toy_world_trials.md quotes the result: the rounded squares the trained demo model draws score well below squares.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from trl_safediffusion.toy.clip import toy_steering_reward
from trl_safediffusion.toy.world import BACKGROUND_RGB, COUNT_WORDS, IMAGE_SIZE, PALETTE, place_objects

SHAPES = {"square": None, "rounded p=4": 4.0, "rounded p=3": 3.0, "rounded p=2.5": 2.5, "circle": 2.0}


def draw(colour: str, exponent: float | None, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` separate objects |dy/r|^p + |dx/r|^p <= 1 (a square when `exponent` is None) on the background."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64) + 0.5
    image = np.tile(np.asarray(BACKGROUND_RGB, dtype=np.float64), (IMAGE_SIZE, IMAGE_SIZE, 1))
    for cy, cx, r in place_objects(count, rng):
        dy, dx = np.abs(yy - cy) / r, np.abs(xx - cx) / r
        mask = np.maximum(dy, dx) <= 1 if exponent is None else dy**exponent + dx**exponent <= 1
        image[mask] = PALETTE[colour]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--colours", default="blue,green", help="colours the shapes are drawn in")
    parser.add_argument("--word", default=None, help="colour word of the prompt (default: the drawn colour)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reward = toy_steering_reward(alpha=0.5, mode="projection")
    rng = np.random.default_rng(args.seed)
    print("prompt".ljust(24) + "".join(s.rjust(15) for s in SHAPES))
    for colour in args.colours.split(","):
        for count, word in COUNT_WORDS.items():
            prompt = f"{word} {args.word or colour} square{'s' if count > 1 else ''}"
            row = []
            for exponent in SHAPES.values():
                images = np.stack([draw(colour, exponent, count, rng) for _ in range(args.images)])
                pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
                rewards, _ = reward(pixels, [prompt] * args.images, None)
                row.append(float(torch.as_tensor(rewards).float().mean()))
            print(prompt.ljust(24) + "".join(f"{r:15.3f}" for r in row))


if __name__ == "__main__":
    main()
