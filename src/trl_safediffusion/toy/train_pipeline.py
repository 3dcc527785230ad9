"""Train the toy Stable Diffusion pipeline on the toy world, from scratch, on a CPU.

Two phases, both seeded:

1. a small `AutoencoderKL` that downsamples 32x32 images by 4 (8x8x4 latents), trained on drawn images with an MSE
   reconstruction loss and a weak KL term; its `scaling_factor` is then set so that scaled latents have unit std;
2. a ~2.8M-parameter `UNet2DConditionModel` (cross-attention at both resolutions) and a tiny `CLIPTextModel`, trained
   together with the epsilon objective of DDPM (arXiv 2006.11239, eq. 14) on captions of freshly drawn images, with
   10% caption dropout (for classifier-free guidance) and EMA weights.

The result is a diffusers folder that `StableDiffusionPipeline.from_pretrained(folder)` loads offline.

    python -m trl_safediffusion.toy.train_pipeline --out toy_pipeline --seed 0

takes about 45 minutes on a busy 2-core CPU with the defaults (`--threads 1`). `--half` stores fp16 safetensors (the shipped assets).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from .world import SAFE_COLOUR_WORDS, UNSAFE_COLOUR_WORDS, caption, draw_batch, sample_spec

logger = logging.getLogger(__name__)

TEXT_HIDDEN_SIZE = 32


def build_components(seed: int = 0) -> dict:
    """Untrained toy components (VAE, UNet, text encoder, tokenizer, DDIM scheduler) built after `torch.manual_seed`."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..tokenization import clip_tokenizer

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[16, 32, 64],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=1.0,
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 96),
        layers_per_block=1,
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_size=TEXT_HIDDEN_SIZE,
            intermediate_size=4 * TEXT_HIDDEN_SIZE,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=TEXT_HIDDEN_SIZE,
        )
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="epsilon",
        steps_offset=1,
    )
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": clip_tokenizer(), "scheduler": scheduler}


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _training_caption(spec, rng: np.random.Generator) -> str:
    count_word = "one" if spec.count == 1 and rng.random() < 0.3 else None
    return caption(spec, count_word=count_word)


def _training_spec(rng: np.random.Generator, colour_balance: str):
    """A random caption spec. "word": uniform over the 8 colour words, so the red hue (3 words) is drawn 3 times as
    often as each safe colour (the shipped pipeline). "family": uniform over the red family and the 5 safe colours,
    then a word within the family."""
    if colour_balance == "word":
        return sample_spec(rng)
    families = [UNSAFE_COLOUR_WORDS] + [(c,) for c in SAFE_COLOUR_WORDS]
    return sample_spec(rng, colours=families[rng.integers(len(families))])


def _noisy_content(spec, red_caption_noise: float, rng: np.random.Generator):
    """What is drawn for a caption: with probability `red_caption_noise` a red-family caption comes with the same
    shapes in a safe colour, as web captions name content the image does not show. This leaves the pretrained model
    some chance of a safe colour for red prompts, the room online RL explores in (SD v1.4 is not 100% unsafe on
    I2P either)."""
    if red_caption_noise > 0 and spec.unsafe and rng.random() < red_caption_noise:
        return dataclasses.replace(spec, colour_word=str(SAFE_COLOUR_WORDS[rng.integers(len(SAFE_COLOUR_WORDS))]))
    return spec


def training_batch(rng: np.random.Generator, batch_size: int, colour_balance: str, caption_dropout: float,
                   red_caption_noise: float) -> tuple[list[str], torch.Tensor]:
    """One pretraining batch of the toy world: captions (empty with probability `caption_dropout`, for classifier-free
    guidance) and the drawn images (B, 3, 32, 32) in [-1, 1], red-family captions drawn with label noise
    (`_noisy_content`)."""
    specs = [_training_spec(rng, colour_balance) for _ in range(batch_size)]
    prompts = [_training_caption(s, rng) if rng.random() >= caption_dropout else "" for s in specs]
    x = _images_to_tensor(draw_batch([_noisy_content(s, red_caption_noise, rng) for s in specs], rng))
    return prompts, x


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(vae, steps: int, batch_size: int, lr: float, kl_weight: float, rng: np.random.Generator) -> float:
    """Train the VAE; returns the final reconstruction MSE (on [-1, 1]) of a fresh batch of 256 images."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    start = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup=50)
        x = _images_to_tensor(draw_batch([sample_spec(rng) for _ in range(batch_size)], rng))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = mse + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info("vae step %d/%d mse %.5f kl %.3f (%.0fs)", step, steps, mse.item(), kl.item(), time.time() - start)
    vae.eval()
    with torch.no_grad():
        x = _images_to_tensor(draw_batch([sample_spec(rng) for _ in range(256)], rng))
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
    return F.mse_loss(recon, x).item()


@torch.no_grad()
def latent_std(vae, rng: np.random.Generator, n: int = 512) -> float:
    """Std of VAE posterior samples over `n` drawn images (the inverse of the `scaling_factor`)."""
    x = _images_to_tensor(draw_batch([sample_spec(rng) for _ in range(n)], rng))
    return vae.encode(x).latent_dist.sample().std().item()


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1.0 - decay)


def save_pipeline(components: dict, out: str, half: bool) -> None:
    """Save a `StableDiffusionPipeline` folder (safetensors) without safety checker or feature extractor."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False
    )
    if half:
        pipe = pipe.to(dtype=torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    write_slow_tokenizer_files(os.path.join(out, "tokenizer"))


def write_slow_tokenizer_files(folder: str) -> None:
    """Write `vocab.json` and `merges.txt` next to `tokenizer.json`, for transformers versions that read only those."""
    from ..tokenization import clip_bpe_vocab_and_merges

    vocab, merges = clip_bpe_vocab_and_merges()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


def train_unet(components: dict, args, rng: np.random.Generator) -> dict:
    """Train UNet + text encoder on captions of drawn images; returns the EMA components."""
    vae, unet, text_encoder, tokenizer, scheduler = (components[k] for k in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"))
    vae.requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.01)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    alphas_cumprod = scheduler.alphas_cumprod
    scaling = vae.config.scaling_factor
    unet.train()
    text_encoder.train()
    start = time.time()
    running = None
    for step in range(args.unet_steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, args.unet_steps, args.unet_lr, warmup=args.unet_warmup)
        prompts, x = training_batch(rng, args.unet_batch_size, args.colour_balance, args.caption_dropout,
                                    args.red_caption_noise)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample() * scaling
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        encoder_hidden_states = text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],))
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        pred = unet(noisy, t, encoder_hidden_states).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))  # (B,)
        if args.min_snr_gamma > 0:
            # Min-SNR-gamma weighting for epsilon prediction (arXiv 2303.09556, eq. 9): min(SNR, gamma) / SNR.
            snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
            per_sample = per_sample * torch.clamp(snr, max=args.min_snr_gamma) / snr
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == args.unet_steps - 1:
            logger.info("unet step %d/%d loss %.4f (%.0fs)", step, args.unet_steps, running, time.time() - start)
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 and step + 1 < args.unet_steps:
            ckpt = {**components, "unet": ema_unet, "text_encoder": ema_text}
            save_pipeline(ckpt, os.path.join(args.out, f"checkpoint-{step + 1}"), half=False)
            logger.info("saved checkpoint-%d", step + 1)
    return {**components, "unet": ema_unet, "text_encoder": ema_text}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (a diffusers StableDiffusionPipeline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 is faster on a busy machine)")
    parser.add_argument("--vae-steps", type=int, default=500)
    parser.add_argument("--vae-batch-size", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the per-dimension KL term")
    parser.add_argument("--vae-from", default=None, help="reuse the VAE of this pipeline folder and skip phase 1")
    parser.add_argument("--unet-from", default=None, help="start UNet and text encoder from this pipeline folder")
    parser.add_argument(
        "--red-caption-noise", type=float, default=0.0,
        help="probability that a red-family caption is drawn in a safe colour (label noise)",
    )
    parser.add_argument(
        "--colour-balance", choices=("word", "family"), default="word",
        help="UNet captions uniform over colour words (red hue 3x as often as each safe colour) or colour families",
    )
    parser.add_argument("--unet-warmup", type=int, default=100, help="linear learning-rate warmup steps of the UNet")
    parser.add_argument("--unet-steps", type=int, default=2000)
    parser.add_argument("--unet-batch-size", type=int, default=48)
    parser.add_argument("--unet-lr", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--min-snr-gamma", type=float, default=5.0, help="Min-SNR loss weighting (0: plain epsilon MSE)")
    parser.add_argument("--checkpoint-every", type=int, default=250, help="save EMA checkpoints (0: never)")
    parser.add_argument("--half", action="store_true", help="store fp16 weights")
    args = parser.parse_args(argv)
    if not 0.0 <= args.red_caption_noise <= 1.0:
        parser.error(f"--red-caption-noise must be a probability in [0, 1], got {args.red_caption_noise}")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    components = build_components(args.seed)
    logger.info(
        "parameters: vae %.2fM unet %.2fM text encoder %.2fM",
        sum(p.numel() for p in components["vae"].parameters()) / 1e6,
        sum(p.numel() for p in components["unet"].parameters()) / 1e6,
        sum(p.numel() for p in components["text_encoder"].parameters()) / 1e6,
    )
    info: dict = {"seed": args.seed, "args": vars(args)}
    t0 = time.time()
    if args.vae_from:
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(args.vae_from, subfolder="vae").to(torch.float32)
        info["vae_from"] = args.vae_from
    else:
        info["vae_mse"] = train_vae(components["vae"], args.vae_steps, args.vae_batch_size, args.vae_lr, args.kl_weight, rng)
        std = latent_std(components["vae"], rng)
        components["vae"].register_to_config(scaling_factor=1.0 / std)
        logger.info("vae mse %.5f latent std %.4f", info["vae_mse"], std)
        components["vae"].save_pretrained(os.path.join(args.out, "vae"))
        info["vae_seconds"] = time.time() - t0
    components["vae"].eval()
    if args.unet_from:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        components["unet"] = UNet2DConditionModel.from_pretrained(args.unet_from, subfolder="unet").to(torch.float32)
        components["text_encoder"] = CLIPTextModel.from_pretrained(args.unet_from, subfolder="text_encoder").to(
            torch.float32
        )
        info["unet_from"] = args.unet_from
    t1 = time.time()
    final = train_unet(components, args, rng)
    info["unet_seconds"] = time.time() - t1
    save_pipeline(final, args.out, half=args.half)
    with open(os.path.join(args.out, "training_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    logger.info("saved %s (%.0fs in all)", args.out, time.time() - t0)


if __name__ == "__main__":
    main()
