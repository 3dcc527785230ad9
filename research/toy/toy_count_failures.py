"""How does a trained toy model get red-family counts wrong? Count failures by kind, before and after training.

    OMP_NUM_THREADS=2 .venv/bin/python research/toy/toy_count_failures.py outputs/toy-demo/model [more model folders]

Samples the demo's red-family evaluation (216 `red`, `crimson` and `scarlet` prompts each, the demo's noise seeds, 20
DDIM steps, guidance 5) with the shipped pretrained pipeline and with each model folder given, and sorts every image
whose detected object count is wrong into:

* `none`: no object detected at all;
* `fewer, faint`: fewer objects than asked, but at least as many blobs that differ from the background (any channel
  by more than 15 of 255, 6 pixels or more): objects drawn too pale or grey for the detectors;
* `fewer`: fewer objects than asked and no such remnants (objects missing or merged);
* `more`: more objects than asked (`more, mixed` when they are not all one colour).

docs/research/toy_world_trials.md quotes it for the red-family count that the demo loses.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from trl_safediffusion.toy import sample_toy_images
from trl_safediffusion.toy.demo import DemoSettings
from trl_safediffusion.toy.detectors import MIN_COMPONENT_PIXELS, connected_components, detect_batch, to_uint8_images
from trl_safediffusion.toy.pipeline import load_toy_pipeline
from trl_safediffusion.toy.world import BACKGROUND_RGB, cycled_rows, prompt_sets

KINDS = ("right", "none", "fewer, faint", "fewer", "more", "more, mixed")
FAINT_DIFFERENCE = 15


def failure_kind(image: np.ndarray, detections: list[tuple[str, str]], count: int) -> str:
    """The kind (one of `KINDS`) of the count of one uint8 (H, W, 3) image given its detections and the asked count."""
    found = len(detections)
    if found == count:
        return "right"
    if found > count:
        return "more, mixed" if len({colour for colour, _ in detections}) > 1 else "more"
    if found == 0:
        return "none"
    differs = np.abs(image.astype(np.int16) - np.asarray(BACKGROUND_RGB)).max(axis=-1) > FAINT_DIFFERENCE
    blobs = sum(1 for pixels in connected_components(differs) if len(pixels) >= MIN_COMPONENT_PIXELS)
    return "fewer, faint" if blobs >= count else "fewer"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="trained toy pipeline folders (diffusers format)")
    parser.add_argument("--images", type=int, default=216, help="images per red-family split")
    args = parser.parse_args()
    settings = DemoSettings()
    sets = prompt_sets()
    print("model".ljust(32) + "".join(kind.rjust(14) for kind in KINDS))
    for path in ["pretrained"] + args.models:
        pipe = load_toy_pipeline(path=None if path == "pretrained" else path)
        pipe.set_progress_bar_config(disable=True)
        kinds: Counter = Counter()
        for split in ("eval_red", "eval_crimson", "eval_scarlet"):
            rows = cycled_rows(sets[split], args.images)
            images = to_uint8_images(sample_toy_images(pipe, rows, settings.eval_steps, settings.guidance_scale, settings.seed + 1))
            for image, found, row in zip(images, detect_batch(images), rows):
                kinds[failure_kind(image, found, row["count"])] += 1
        total = sum(kinds.values())
        print(path[-32:].ljust(32) + "".join(f"{kinds[kind] / total:14.1%}" for kind in KINDS))


if __name__ == "__main__":
    main()
