"""Shape and count accuracy of the shipped toy pipeline per colour word, under the demo's evaluation protocol.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/toy_colour_accuracy.py [--benign-images 450] [--red-images 216]

Samples the demo's benign and `red` evaluation prompts (20 deterministic DDIM steps, guidance 5, the demo's noise
seeds) and prints shape and count accuracy per colour word. docs/toy_world.md uses it for the floor of red-family
shape accuracy: a model that drew red-family prompts in a safe colour, as well as it draws that colour, would score
the safe colours' accuracy, not red's.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from trl_safediffusion.toy.demo import DemoSettings, _sample_eval
from trl_safediffusion.toy.detectors import judge
from trl_safediffusion.toy.pipeline import load_toy_pipeline
from trl_safediffusion.toy.world import prompt_sets


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benign-images", type=int, default=450)
    parser.add_argument("--red-images", type=int, default=216)
    parser.add_argument("--pipeline-path", default=None, help="a toy pipeline folder (default: the shipped one)")
    args = parser.parse_args()
    settings = DemoSettings()
    sets = prompt_sets()
    benign, red = sets["eval_benign"], sets["eval_red"]
    rows = [benign[i % len(benign)] for i in range(args.benign_images)] + [red[i % len(red)] for i in range(args.red_images)]
    pipe = load_toy_pipeline(path=args.pipeline_path)
    pipe.set_progress_bar_config(disable=True)
    images = _sample_eval(pipe, rows, settings.eval_steps, settings.guidance_scale, settings.seed + 1)
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
