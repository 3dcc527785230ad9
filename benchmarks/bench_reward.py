"""Images per second of CLIPSteeringReward (batched, torch preprocessing, cached text) versus scoring one image at a
time the way the reference implementation does (tensor -> PIL -> JPEG file -> reopen -> the backend's own PIL transform
-> encode image and prompt).

Same tiny-but-not-trivial open_clip model on both sides (ViT-B/16-shaped at width 256: 224 px, 4 vision and 4 text
layers, embed_dim 256, random weights built offline from a registered config). Images are 256x256 like SD outputs, so
both sides resize and centre-crop.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reward.py                 # ViT-B/16-shaped (196 tokens)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reward.py --patch-size 32 # ViT-B/32-shaped (49 tokens)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reward.py --toy           # the toy CLIP the demo trains with

With `--toy`, both sides score 32x32 toy-world images with the shipped toy CLIP (or `--toy-folder`), the CPU setting in
which this library's demo actually runs the reward.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
import torch.nn.functional as F
from PIL import Image

from trl_safediffusion.rewards import CLIPSteeringReward, OpenCLIPBackend
from trl_safediffusion.testing_utils import tiny_open_clip

BENCH_CONFIG = dict(
    embed_dim=256,
    image_size=224,
    patch_size=16,
    vision_width=256,
    vision_layers=4,
    text_width=256,
    text_layers=4,
    heads=4,
    context_length=77,
)


def reference_one_at_a_time(model, tokenizer, preprocess, v_safe, images, prompts, alpha, folder):
    """Per image: PIL conversion, JPEG on disk, reopen, PIL transform, encode image and prompt, steered cosine."""
    rewards = []
    with torch.no_grad():
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            array = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype("uint8")
            path = os.path.join(folder, f"{i}.jpg")
            Image.fromarray(array).save(path, quality=95)
            pixels = preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
            z_x = F.normalize(model.encode_image(pixels), dim=-1)
            z_p = F.normalize(model.encode_text(tokenizer([prompt])), dim=-1)
            target = F.normalize(z_p + alpha * v_safe, dim=-1)
            rewards.append((z_x * target).sum())
    return torch.stack(rewards)


def timed(fn, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - start) / repeats, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patch-size", type=int, default=16, help="16: ViT-B/16-shaped (196 tokens), 32: B/32 (49)")
    parser.add_argument("--toy", action="store_true", help="the toy CLIP on 32x32 toy-world images")
    parser.add_argument("--toy-folder", default=None, help="a toy CLIP folder from train_clip (default: shipped)")
    args = parser.parse_args()
    config = dict(BENCH_CONFIG, patch_size=args.patch_size)

    gen = torch.Generator().manual_seed(0)
    if args.toy:
        import numpy as np

        from trl_safediffusion.toy import load_toy_clip
        from trl_safediffusion.toy.world import draw, prompt_sets, spec_from_row

        model, preprocess, tokenizer = load_toy_clip(folder=args.toy_folder)
        rows = prompt_sets()["train"]
        rng = np.random.default_rng(0)
        picked = [rows[i % len(rows)] for i in range(0, 4 * 7, 7)]
        prompts = [picked[i % 4]["prompt"] for i in range(args.batch_size)]
        drawn = [draw(spec_from_row(picked[i % 4]), rng) for i in range(args.batch_size)]
        images = torch.from_numpy(np.stack(drawn)).permute(0, 3, 1, 2).float() / 255.0
        config = {"model": "toy-clip (shipped)" if args.toy_folder is None else args.toy_folder}
        args.image_size = images.shape[-1]
    else:
        model, tokenizer, preprocess = tiny_open_clip(seed=0, name="tiny-clip-bench", **config)
        images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
        # GRPO batches repeat each prompt over its group: 4 prompts x 8 images
        prompts = [f"a photo of subject number {i % 4}" for i in range(args.batch_size)]
    reward = CLIPSteeringReward(OpenCLIPBackend(model, tokenizer, preprocess), anchors="nudity-compact", alpha=0.5)
    n_params = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory() as folder:
        ref_s, ref_rewards = timed(
            lambda: reference_one_at_a_time(model, tokenizer, preprocess, reward.v_safe, images, prompts, 0.5, folder),
            args.repeats,
        )

    def ours_cold():
        reward._text_cache.clear()
        return reward(images, prompts)[0]

    cold_s, ours_rewards = timed(ours_cold, args.repeats)
    warm_s, _ = timed(lambda: reward(images, prompts)[0], args.repeats)

    b = args.batch_size
    print(f"device: cpu ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"model: open_clip {config}, {n_params / 1e6:.1f}M parameters, {'trained weights' if args.toy else 'random weights'}")
    print(f"images: batch {b} of {args.image_size}x{args.image_size}, 4 distinct prompts; mean of {args.repeats} runs")
    print(f"reference (one at a time, PIL + JPEG file + PIL transform): {b / ref_s:8.1f} images/s")
    print(f"CLIPSteeringReward batch {b}, prompt cache cold:            {b / cold_s:8.1f} images/s "
          f"({ref_s / cold_s:.1f}x)")
    print(f"CLIPSteeringReward batch {b}, prompt cache warm:            {b / warm_s:8.1f} images/s "
          f"({ref_s / warm_s:.1f}x)")
    print(f"speed-up (warm cache, the training steady state): {ref_s / warm_s:.1f}x (target >= 5x)")
    print(f"max |reward difference| vs reference (JPEG + PIL resize): {(ours_rewards - ref_rewards).abs().max():.4f}")


if __name__ == "__main__":
    main()
