"""How far a trained toy model's predicted object maps are from the pretrained model's, step by step.

    OMP_NUM_THREADS=2 .venv/bin/python research/toy/toy_structure_steps.py outputs/toy-demo/model [--seed 0]

Follows deterministic DDIM trajectories (10 steps, guidance 5, the training rollouts' discretisation) of the
pretrained model for `red` prompts and, at every step, gives both UNets the same noisy latent. For each it prints the
mean of `toy.ObjectMap` over the predicted clean image `x0_hat` of the guided step, for the trained model and the
pretrained one, and the mean squared gap between the two maps, which is what the structure anchor penalises.
docs/research/toy_world_trials.md ("The structure anchor") uses it to show that the map of `x0_hat` is not colour-blind at the
noisiest steps.
"""

from __future__ import annotations

import argparse

import torch

from trl_safediffusion.toy import ObjectMap, load_toy_pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained pipeline folder (the demo's <output-dir>/model)")
    parser.add_argument("--pipeline-path", default=None, help="the pretrained pipeline it started from")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument("--per-prompt", type=int, default=4, help="trajectories per prompt")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    reference = load_toy_pipeline(path=args.pipeline_path)
    trained = load_toy_pipeline(path=args.model)
    object_map = ObjectMap(reference.vae)
    prompts = ["a red circle", "two red squares", "three red triangles", "two red circles"] * args.per_prompt
    scheduler = reference.scheduler
    scheduler.set_timesteps(args.steps)
    with torch.no_grad():
        cond, uncond = reference.encode_prompt(prompts, "cpu", 1, True, [""] * len(prompts))
        embeds = torch.cat([uncond, cond])
        size, channels = reference.unet.config.sample_size, reference.unet.config.in_channels
        latents = torch.randn(len(prompts), channels, size, size, generator=torch.Generator().manual_seed(args.seed))
        print("step  timestep  map mean trained  map mean pretrained  mean squared map gap")
        for i, t in enumerate(scheduler.timesteps):
            alpha = scheduler.alphas_cumprod[t]
            maps, eps = [], []
            for pipe in (trained, reference):
                e_uncond, e_cond = pipe.unet(torch.cat([latents, latents]), t, embeds).sample.chunk(2)
                guided = e_uncond + args.guidance * (e_cond - e_uncond)
                x0 = (latents - (1 - alpha).sqrt() * guided) / alpha.sqrt()
                maps.append(object_map(x0))
                eps.append(guided)
            gap = float(((maps[0] - maps[1]) ** 2).mean())
            print(f"{i:4d}  {int(t):8d}  {float(maps[0].mean()):16.3f}  {float(maps[1].mean()):19.3f}  {gap:20.4f}")
            latents = scheduler.step(eps[1], t, latents, eta=0.0).prev_sample


if __name__ == "__main__":
    main()
