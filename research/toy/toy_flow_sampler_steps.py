"""Benign accuracy of the toy flow-matching pipeline (`assets/toy-sd3`) against its sampler settings.

    OMP_NUM_THREADS=1 .venv/bin/python research/toy/toy_flow_sampler_steps.py [--images 200] \
        [--settings 20:1:5 50:1:5 20:3:5 20:1:3 28:1:5 28:3:5 40:1:5]

Each setting is `steps:shift:guidance`: the number of Euler steps, the `shift` of `FlowMatchEulerDiscreteScheduler`
(the shipped pipeline's is 1; SD3's is 3, which spends more of the steps at high noise) and the guidance scale. For
each it samples the benign evaluation split as `python -m trl_safediffusion.toy.evaluate --family sd3` does (the same
prompts, the same noise for every setting) and prints colour, shape, count and all-correct accuracy.
docs/research/toy_world_trials.md uses it to ask whether the pipeline's benign all-correct (67.5% at 20 steps) is
held back by the model or by 20 Euler steps of its sampler.
"""

from __future__ import annotations

import argparse
import json

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from trl_safediffusion.toy import load_toy_flow_pipeline
from trl_safediffusion.toy.evaluate import evaluate_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="toy flow pipeline folder (default: the shipped one)")
    parser.add_argument("--images", type=int, default=200, help="benign images per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--settings", nargs="+", default=["20:1:5", "50:1:5", "20:3:5", "20:1:3", "28:1:5",
                                                           "28:3:5", "40:1:5"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_toy_flow_pipeline(path=args.pipeline)
    config = dict(pipe.scheduler.config)
    for setting in args.settings:
        steps, shift, guidance = setting.split(":")
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config, shift=float(shift))
        report = evaluate_pipeline(pipe, args.images, ("eval_benign",), int(steps), float(guidance), args.seed,
                                   progress=False)["eval_benign"]
        print(f"steps {int(steps):3d}  shift {float(shift):.0f}  guidance {float(guidance):.0f}  "
              + json.dumps({k: report[k] for k in ("colour", "shape", "count", "all_correct")}), flush=True)


if __name__ == "__main__":
    main()
