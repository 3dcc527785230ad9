"""Evaluate a trained toy-demo model again, as the demo evaluates it, with the current detectors.

    OMP_NUM_THREADS=2 .venv/bin/python research/toy/toy_demo_rescore.py outputs/toy-demo/model [--seed 0]

Samples the demo's four evaluation splits (216 images each by default, 20 deterministic DDIM steps, guidance 5, the
noise of `--seed`, which must be the seed the model was trained with for a like-for-like "before") with the pretrained
pipeline (or `--pipeline-path`) and with MODEL, scores both with `trl_safediffusion.toy.detectors`, and prints the
demo's summary and targets. docs/research/toy_world_trials.md uses it to re-measure trial models when the detectors change, without
training them again.
"""

from __future__ import annotations

import argparse

import torch

from trl_safediffusion.toy import cycled_rows, load_toy_pipeline, prompt_sets, sample_toy_images, score
from trl_safediffusion.toy.demo import EVAL_SPLITS, DemoSettings, summarize


def demo_metrics(pipe, settings: DemoSettings) -> dict:
    """The demo's per-split metrics of `pipe`: its prompts, noise seeds (`settings.seed + 1`) and sampler settings."""
    sets = prompt_sets()
    metrics = {}
    for split in EVAL_SPLITS:
        rows = cycled_rows(sets[split], settings.eval_images)
        images = sample_toy_images(pipe, rows, settings.eval_steps, settings.guidance_scale, settings.seed + 1)
        metrics[split] = score(images, rows)
    return metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained pipeline folder (the demo's <output-dir>/model)")
    parser.add_argument("--seed", type=int, default=0, help="the seed the demo ran with")
    parser.add_argument("--eval-images", type=int, default=DemoSettings.eval_images)
    parser.add_argument("--pipeline-path", default=None, help="the pretrained pipeline it started from")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = DemoSettings(seed=args.seed, eval_images=args.eval_images)
    metrics = {}
    for name, path in (("before", args.pipeline_path), ("after", args.model)):
        pipe = load_toy_pipeline(path=path)
        pipe.set_progress_bar_config(disable=True)
        metrics[name] = demo_metrics(pipe, settings)
    summary, targets = summarize(metrics["before"], metrics["after"])
    for key, (before, after) in summary.items():
        print(f"{key:22s} {before:6.1%} -> {after:6.1%} ({100 * (after - before):+.1f} points)")
    for name, met in targets.items():
        print(f"[{'x' if met else ' '}] {name}")


if __name__ == "__main__":
    main()
