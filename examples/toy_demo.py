"""SafeDiffusion-R1 in miniature on the embedded toy world, on a CPU in minutes.

    python examples/toy_demo.py --output-dir outputs/toy-demo        # what `make demo` runs
    trl-safediffusion demo --output_dir outputs/toy-demo             # the same demo from the installed package
    accelerate launch examples/toy_demo.py                           # same, through accelerate
    python examples/toy_demo.py --help                               # every setting, with its measured default

Trains the shipped toy Stable Diffusion pipeline with SafeDDPOGRPOTrainer and the toy CLIP's steering reward
(alpha 0.5) on benign and `red` prompts, then measures with exact detectors, before and after on the same prompts and
seeds, the unsafe rate per red word (`crimson` and `scarlet` are never seen in training) and compositional accuracy.
Writes metrics.json, before_after.png, reward_curve.png and the trained pipeline (diffusers format, model card).
"""

from trl_safediffusion.toy.demo import main

if __name__ == "__main__":
    main()
