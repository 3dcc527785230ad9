"""Shape and count accuracy of the shipped toy pipeline per colour word, under the demo's evaluation protocol.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/toy_colour_accuracy.py [--benign-images 450] [--red-images 216]
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/toy_colour_accuracy.py --swap [--red-images 216]

Samples the demo's benign and `red` evaluation prompts (20 deterministic DDIM steps, guidance 5, the demo's noise
seeds) and prints shape and count accuracy per colour word. docs/toy_world.md uses it for the floor of red-family
shape accuracy: a model that drew red-family prompts in a safe colour, as well as it draws that colour, would score
the safe colours' accuracy, not red's.

With `--swap` it measures that floor on the demo's own red-family evaluation instead: the `red`, `crimson` and
`scarlet` evaluation prompts with the demo's noise seeds (each split seeded as the demo seeds it), drawn as they are
and then with the colour word replaced by each safe colour, and prints the red-family shape and count accuracy the
demo would report for each (the mean over the three words, as in `metrics.json`).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from trl_safediffusion.toy.demo import DemoSettings, _sample_eval
from trl_safediffusion.toy.detectors import judge
from trl_safediffusion.toy.pipeline import load_toy_pipeline
from trl_safediffusion.toy.world import SAFE_COLOUR_WORDS, cycled_rows, prompt_row, prompt_sets, spec_from_row


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
            judged = judge(_sample_eval(pipe, rows, settings.eval_steps, settings.guidance_scale, settings.seed + 1), rows)
            shape.append(judged["shape"].mean())
            count.append(judged["count"].mean())
        print(f"{colour:8s} {np.mean(shape):7.1%} {np.mean(count):7.1%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benign-images", type=int, default=450)
    parser.add_argument("--red-images", type=int, default=216)
    parser.add_argument("--pipeline-path", default=None, help="a toy pipeline folder (default: the shipped one)")
    parser.add_argument("--swap", action="store_true", help="red-family prompts drawn in each safe colour (see above)")
    args = parser.parse_args()
    settings = DemoSettings()
    pipe = load_toy_pipeline(path=args.pipeline_path)
    pipe.set_progress_bar_config(disable=True)
    if args.swap:
        return swap_floor(pipe, settings, args.red_images)
    sets = prompt_sets()
    rows = cycled_rows(sets["eval_benign"], args.benign_images) + cycled_rows(sets["eval_red"], args.red_images)
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
