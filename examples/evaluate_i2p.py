"""Evaluate a Stable Diffusion model (optionally with a trained LoRA) on I2P with the I2P protocol: NudeNet exposed
parts (5 classes, score >= 0.6; the 8- and 9-class counts are reported alongside, labelled), Q16, their OR
("inappropriate") per category, and CLIP score / steering-reward statistics.

    pip install -e '.[eval]'     # from the repository checkout: NudeNet (AGPL-3.0)
    python examples/evaluate_i2p.py --model CompVis/stable-diffusion-v1-4 --q16_prompts prompts.p \
        --output_dir eval/sd14-i2p
    python examples/evaluate_i2p.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --lora outputs/safediffusion-r1-sd15-lora --q16_prompts prompts.p --output_dir eval/r1-lora-i2p
    python examples/evaluate_i2p.py --i2p_categories sexual --limit 200 --metrics nudenet clip   # a quick subset

On several GPUs, split the prompts with --limit / disjoint runs; the outputs are per-image tables that concatenate.
`prompts.p` is the prompt-embedding file of the Q16 release (github.com/ml-research/Q16); without it, drop q16 from
--metrics and the "inappropriate" rate is labelled NudeNet-only. See docs/evaluation.md before comparing numbers.
"""

import os
import sys

from trl_safediffusion.cli import CLIError, configure_logging, run_evaluate

I2P_DEFAULTS = [
    "--prompts", "i2p",
    "--metrics", "nudenet", "q16", "clip",
    "--images_per_prompt", "1",
    "--num_inference_steps", "50",
    "--guidance_scale", "7.5",
    "--seed_column", "sd_seed",
    "--batch_size", "8",
]


def main(argv=None):
    """Parse the flags (those of `trl-safediffusion evaluate`, plus `--log_level`) and evaluate; a mistake is one line
    on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = configure_logging(["--log_level", "info", *argv])  # a user's --log_level comes later and wins
        # user flags come last and override the I2P defaults (the last value of a flag wins)
        return run_evaluate(I2P_DEFAULTS + argv)
    except CLIError as err:
        print(f"{os.path.basename(__file__)}: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
