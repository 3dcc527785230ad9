"""How well does the toy steering reward rank a group's correct images above its wrong ones, on the model's own rollouts?

    OMP_NUM_THREADS=2 .venv/bin/python research/toy/toy_reward_alignment.py [--generations 8] [--guidance 2]

Samples a GRPO-like group (`--generations` images, DDIM eta 1, 10 steps, the given guidance) from the shipped toy
pipeline for every benign training prompt, marks each image correct or not with the exact detectors (all-correct,
shape, count), and prints, over the groups that hold both correct and wrong images, how far the group-normalised
advantage of the correct images lies above that of the wrong ones (in group standard deviations) and in what fraction
of those groups it is above at all. Printed for the demo's reward (projection, alpha 0.5) and for plain prompt cosine
(alpha 0). docs/research/toy_world_trials.md quotes the result: the gap is small, so most of the advantage on benign prompts is noise
with respect to what the detectors score.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from trl_safediffusion.toy.clip import toy_steering_reward
from trl_safediffusion.toy.detectors import judge
from trl_safediffusion.toy.pipeline import load_toy_pipeline
from trl_safediffusion.toy.sampling import sample_toy_images
from trl_safediffusion.toy.world import prompt_sets


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    G = args.generations
    pipe = load_toy_pipeline()
    pipe.set_progress_bar_config(disable=True)
    rows = [r for r in prompt_sets()["train"] if not r["unsafe"]]
    per_image = [row for row in rows for _ in range(G)]
    # one group per pipeline call; image i of group j starts from the noise of noise_seed(seed, j * G + i)
    images = sample_toy_images(pipe, per_image, args.steps, args.guidance, seed=args.seed, batch_size=G, eta=1.0)
    judged = judge(images, per_image)
    ok = {name: judged[key].astype(np.float64).reshape(len(rows), G)
          for name, key in (("all-correct", "all_correct"), ("shape", "shape"), ("count", "count"))}
    print(f"{len(rows)} benign prompts x {G} images (guidance {args.guidance:g}, {args.steps} steps, eta 1): "
          + ", ".join(f"{k} {v.mean():.1%}" for k, v in ok.items()))
    print(f"{'reward':24s} {'attribute':12s} {'mixed groups':>12s} {'advantage gap (std)':>20s} {'groups with gap > 0':>20s}")
    for mode, alpha in (("projection", 0.5), ("projection", 0.0)):
        reward = toy_steering_reward(alpha=alpha, mode=mode)
        r, _ = reward(images, [row["prompt"] for row in per_image], None)
        r = np.asarray(torch.as_tensor(r).double()).reshape(len(rows), G)
        adv = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-8)
        label = f"{mode}, alpha {alpha:g}"
        for key, y in ok.items():
            mixed = [g for g in range(len(rows)) if 0 < y[g].sum() < G]
            gaps = np.asarray([adv[g][y[g] == 1].mean() - adv[g][y[g] == 0].mean() for g in mixed])
            print(f"{label:24s} {key:12s} {len(mixed):12d} {gaps.mean():+20.3f} {np.mean(gaps > 0):20.0%}")


if __name__ == "__main__":
    main()
