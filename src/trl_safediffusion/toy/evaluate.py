"""Measure a toy pipeline with the exact detectors: compositional accuracy and unsafe rate per prompt split.

    python -m trl_safediffusion.toy.evaluate --images-per-split 300 --steps 20 --guidance 5 --seed 0

evaluates the shipped pipeline (or `--pipeline DIR`) on the `eval_*` prompt sets of [`prompt_sets`], cycling through
each split's prompts until it has the requested number of images, and prints a JSON report. `--family sd3` evaluates
the toy flow-matching pipeline (a `StableDiffusion3Pipeline`, Euler steps) instead of the Stable Diffusion one (DDIM).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from .detectors import score
from .pipeline import TOY_GUIDANCE_SCALE, TOY_NUM_INFERENCE_STEPS, load_toy_flow_pipeline, load_toy_pipeline
from .sampling import sample_toy_images
from .world import cycled_rows, prompt_sets

logger = logging.getLogger(__name__)

EVAL_SPLITS: tuple[str, ...] = ("eval_benign", "eval_red", "eval_crimson", "eval_scarlet")
# Pipeline family -> loader of the shipped toy pipeline of that family (`path=` loads another folder).
TOY_LOADERS = {"sd": load_toy_pipeline, "sd3": load_toy_flow_pipeline}


def sample_images(
    pipe,
    prompts: list[str],
    num_inference_steps: int = TOY_NUM_INFERENCE_STEPS,
    guidance_scale: float = TOY_GUIDANCE_SCALE,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    progress_bar=None,
) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] for `prompts`: [`~trl_safediffusion.toy.sampling.sample_toy_images`] drawing
    from one `generator` (torch's global one when `None`)."""
    return sample_toy_images(pipe, prompts, num_inference_steps, guidance_scale, batch_size=batch_size,
                             generator=generator if generator is not None else torch.default_generator,
                             progress_bar=progress_bar)


def evaluate_pipeline(
    pipe,
    images_per_split: int = 300,
    splits: tuple[str, ...] = EVAL_SPLITS,
    num_inference_steps: int = TOY_NUM_INFERENCE_STEPS,
    guidance_scale: float = TOY_GUIDANCE_SCALE,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool | None = None,
) -> dict[str, dict[str, float]]:
    """[`score`] of `images_per_split` samples for each prompt split (prompts cycled in order).

    `progress` shows a progress bar over all the images (`None`: only on a terminal).

    Returns:
        `dict`: split name -> `{count, shape, colour, all_correct, unsafe_rate, n}`.
    """
    from tqdm.auto import tqdm

    sets = prompt_sets()
    generator = torch.Generator("cpu").manual_seed(seed)
    report = {}
    bar = tqdm(total=len(splits) * images_per_split, desc="evaluating", unit="img",
               disable=None if progress is None else not progress)
    for split in splits:
        rows = cycled_rows(sets[split], images_per_split)
        start = time.time()
        bar.set_postfix_str(split)
        images = sample_toy_images(pipe, rows, num_inference_steps, guidance_scale, batch_size=batch_size,
                                   generator=generator, progress_bar=bar)
        report[split] = score(images, rows)
        logger.info("%s: %s (%.0fs)", split, report[split], time.time() - start)
    bar.close()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="pipeline folder (default: the shipped toy pipeline)")
    parser.add_argument("--family", choices=sorted(TOY_LOADERS), default="sd",
                        help="sd: a StableDiffusionPipeline (toy-sd); sd3: a StableDiffusion3Pipeline (toy-sd3)")
    parser.add_argument("--images-per-split", type=int, default=300)
    parser.add_argument("--steps", type=int, default=TOY_NUM_INFERENCE_STEPS)
    parser.add_argument("--guidance", type=float, default=TOY_GUIDANCE_SCALE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--splits", nargs="+", default=list(EVAL_SPLITS))
    parser.add_argument("--out", default=None, help="also write the JSON report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    pipe = TOY_LOADERS[args.family](path=args.pipeline)
    report = evaluate_pipeline(pipe, args.images_per_split, tuple(args.splits), args.steps, args.guidance, args.seed)
    report["settings"] = {"images_per_split": args.images_per_split, "steps": args.steps, "guidance": args.guidance,
                          "seed": args.seed, "pipeline": args.pipeline or "shipped",
                          "family": args.family}
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
