"""Train the toy flow-matching pipeline (a real diffusers `StableDiffusion3Pipeline`) on the toy world, on a CPU.

The VAE and the text tower come from the shipped toy Stable Diffusion pipeline (`assets/toy-sd`) and stay frozen:

- the toy `AutoencoderKL` (8x8x4 latents), with `shift_factor` 0 and the toy `scaling_factor`, so that SD3's
  `(latents - shift_factor) * scaling_factor` is the toy pipeline's scaling;
- the toy CLIP text model, as a `CLIPTextModelWithProjection` with an identity `text_projection`, for both
  `text_encoder` and `text_encoder_2`. SD3 concatenates the penultimate hidden states of both (2 x 32 = 64, the
  transformer's `joint_attention_dim`) and their projected pooled outputs (the 64 `pooled_projections`);
  `text_encoder_3` and `tokenizer_3` are None, so the pipeline appends `max_sequence_length` (256) zero tokens. The
  CLIP tokenizers are saved with `model_max_length` 16 (the longest caption has 7 tokens with begin and end); CLIP is
  causal, so the first 16 hidden states are the same as with 77.

Only a ~2.3M-parameter `SD3Transformer2DModel` (patch size 2 on the 8x8 latents: 16 image tokens; 4 joint blocks,
4 heads of 32) is trained, with the rectified-flow objective of SD3 (arXiv 2403.03206, sec. 2 and 3.1):
`x_t = (1 - t) x_0 + t noise`, target `noise - x_0`, `t` logit-normal(0, 1), timestep `1000 t`, as the sigmas and
timesteps of `FlowMatchEulerDiscreteScheduler` (shift 1) mean. Captions are the ones of
[`~trl_safediffusion.toy.train_pipeline`] (same caption, colour-balance and noisy-red-caption functions), with 10%
empty captions for classifier-free guidance and EMA weights.

Training runs the 256 identical zero tokens as one token whose attention logit is raised by log(256): identical keys
and values contribute `256 exp(q.k) v` to every softmax, and identical tokens stay identical through the blocks, so
this is exact (the tests check it against the stock forward) and about ten times cheaper on a CPU. The saved
transformer has the stock attention processors.

    python -m trl_safediffusion.toy.train_flow_pipeline --out toy_flow --seed 0 --half --threads 2

takes 26 minutes (6,500 steps of batch 48, 0.24 s a step) on 2 CPU cores; `--init FOLDER` trains a further stage from
a saved one (the shipped `assets/toy-sd3` had a second, 4,000 steps at lr 6e-4: docs/toy_world.md);
`--num-layers`, `--num-heads` and `--patch-size` shape a fresh transformer (the ones tried: docs/toy_world.md). The
folder loads with stock diffusers, `StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None,
tokenizer_3=None)` (diffusers asks for the two None components of any SD3 folder without T5), and is evaluated with
20 Euler steps and guidance 5.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..pipelines.stable_diffusion_3 import RepeatedTokenJointAttnProcessor
from .train_pipeline import _ema_update, _lr_at, training_batch, write_slow_tokenizer_files

logger = logging.getLogger(__name__)

TOKENIZER_MAX_LENGTH = 16
# Zero tokens that StableDiffusion3Pipeline appends without T5 (its default `max_sequence_length`).
SD3_MAX_SEQUENCE_LENGTH = 256
FLOW_SHIFT = 1.0
# The shipped transformer's shape; `--num-layers` / `--num-heads` / `--patch-size` change it for a fresh one.
NUM_LAYERS, NUM_HEADS, HEAD_DIM, PATCH_SIZE = 4, 4, 32, 2
PATCH_SIZES = (1, 2, 4)  # the patch sizes that divide the 8x8 latents


def toy_sd_path() -> str:
    """Folder of the shipped toy Stable Diffusion pipeline (the source of the VAE and the text tower)."""
    from .pipeline import toy_pipeline_path

    return toy_pipeline_path()


def load_toy_text_encoder(folder: str):
    """The toy CLIP text model of `folder/text_encoder` as a frozen `CLIPTextModelWithProjection` whose
    `text_projection` is the identity (so its `text_embeds` are the toy model's pooled output)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    source = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).to(torch.float32)
    config = CLIPTextConfig.from_dict({**source.config.to_dict(), "architectures": ["CLIPTextModelWithProjection"]})
    config.projection_dim = config.hidden_size
    config.dtype = "float32"
    encoder = CLIPTextModelWithProjection(config).to(torch.float32)
    # transformers 5 keeps CLIPTextModel's modules at the top level; 4.x nests them under `text_model`.
    state = {k.removeprefix("text_model."): v for k, v in source.state_dict().items()}
    encoder.text_model.load_state_dict(state, strict=True)
    with torch.no_grad():
        encoder.text_projection.weight.copy_(torch.eye(config.hidden_size))
    return encoder.eval().requires_grad_(False)


def build_flow_components(source: str | None = None, seed: int = 0, num_layers: int = NUM_LAYERS,
                          num_attention_heads: int = NUM_HEADS, patch_size: int = PATCH_SIZE) -> dict:
    """The components of the toy `StableDiffusion3Pipeline`: the frozen VAE and text tower of the toy pipeline at
    `source` (default: the shipped one) and an untrained transformer built after `torch.manual_seed(seed)` with
    `num_layers` joint blocks, `num_attention_heads` heads of `HEAD_DIM` (32) and patches of `patch_size` latent pixels
    (1: 64 image tokens on the 8x8 latents; 2: 16)."""
    if num_layers < 1 or num_attention_heads < 1:
        raise ValueError(f"num_layers ({num_layers}) and num_attention_heads ({num_attention_heads}) must be >= 1")
    if patch_size not in PATCH_SIZES:
        raise ValueError(f"patch_size must divide the 8x8 latents: one of {PATCH_SIZES}, got {patch_size}")
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from ..tokenization import clip_tokenizer

    source = source if source is not None else toy_sd_path()
    vae = AutoencoderKL.from_pretrained(os.path.join(source, "vae")).to(torch.float32)
    vae.register_to_config(shift_factor=0.0)
    vae.eval().requires_grad_(False)
    text_encoder = load_toy_text_encoder(source)
    text_width = text_encoder.config.hidden_size
    tokenizer = clip_tokenizer(model_max_length=TOKENIZER_MAX_LENGTH)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=patch_size,
        in_channels=4,
        num_layers=num_layers,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=2 * text_width,
        caption_projection_dim=HEAD_DIM * num_attention_heads,  # SD3 projects the context to the transformer's width
        pooled_projection_dim=2 * text_encoder.config.projection_dim,
        out_channels=4,
        pos_embed_max_size=8,
    )
    return {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=FLOW_SHIFT),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": copy.deepcopy(text_encoder),
        "tokenizer_2": copy.deepcopy(tokenizer),
        "text_encoder_3": None,
        "tokenizer_3": None,
    }


@torch.no_grad()
def encode_clip_prompts(components: dict, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What `StableDiffusion3Pipeline.encode_prompt` computes from the two CLIP encoders: the concatenated penultimate
    hidden states (B, 16, 64) and the concatenated pooled projections (B, 64); the zero T5 tokens are left out."""
    hidden, pooled = [], []
    for tok_key, enc_key in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        tokenizer, encoder = components[tok_key], components[enc_key]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # (B, L, 32)
        pooled.append(out.text_embeds)  # (B, 32)
    return torch.cat(hidden, dim=-1), torch.cat(pooled, dim=-1)


def flow_training_pair(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor):
    """Rectified flow (arXiv 2403.03206, eq. 1 and 3 with a = 1 - t, b = t): the noisy latents
    `(1 - sigma) x_0 + sigma noise` and the velocity target `noise - x_0`; `sigmas` (B,) in [0, 1]."""
    s = sigmas.view(-1, 1, 1, 1)
    return (1 - s) * latents + s * noise, noise - latents


def sample_sigmas(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit-normal(0, 1) times (arXiv 2403.03206, eq. 19): sigmoid of a standard normal, (n,)."""
    return torch.sigmoid(torch.randn(n, generator=generator))


def training_context(hidden: torch.Tensor, zero_tokens: int) -> torch.Tensor:
    """The context of a training forward: the CLIP tokens (B, L, D) then one zero token that stands for the
    pipeline's `zero_tokens` zero T5 tokens (with `RepeatedTokenJointAttnProcessor(zero_tokens)`)."""
    if zero_tokens < 1:
        raise ValueError(f"zero_tokens must be >= 1, got {zero_tokens}")
    return torch.cat([hidden, hidden.new_zeros(hidden.shape[0], 1, hidden.shape[2])], dim=1)


def save_flow_pipeline(components: dict, out: str, half: bool) -> None:
    """Save a `StableDiffusion3Pipeline` folder (safetensors) with the stock attention processors."""
    from diffusers import StableDiffusion3Pipeline
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    components["transformer"].set_attn_processor(JointAttnProcessor2_0())
    pipe = StableDiffusion3Pipeline(**components)
    if half:
        pipe = pipe.to(dtype=torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    if half:
        pipe.to(dtype=torch.float32)
    for sub in ("tokenizer", "tokenizer_2"):
        write_slow_tokenizer_files(os.path.join(out, sub))


def train_transformer(components: dict, args, rng: np.random.Generator) -> tuple[torch.nn.Module, float]:
    """Train the transformer on captions of drawn images; returns its EMA copy and the final running loss."""
    vae, transformer = components["vae"], components["transformer"]
    ema = copy.deepcopy(transformer).requires_grad_(False)
    transformer.set_attn_processor(RepeatedTokenJointAttnProcessor(SD3_MAX_SEQUENCE_LENGTH))
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    scaling, shift = vae.config.scaling_factor, vae.config.shift_factor
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    transformer.train()
    start = time.time()
    running = math.nan
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, args.steps, args.lr, warmup=args.warmup)
        prompts, x = training_batch(rng, args.batch_size, args.colour_balance, args.caption_dropout,
                                    args.red_caption_noise)
        new = sorted({p for p in prompts if p not in cache})
        if new:
            hidden, pooled = encode_clip_prompts(components, new)
            cache.update({p: (h, q) for p, h, q in zip(new, hidden, pooled)})
        hidden = torch.stack([cache[p][0] for p in prompts])  # (B, 16, 64)
        pooled = torch.stack([cache[p][1] for p in prompts])  # (B, 64)
        with torch.no_grad():
            latents = (vae.encode(x).latent_dist.sample(generator=generator) - shift) * scaling  # (B, 4, 8, 8)
        noise = torch.randn(latents.shape, generator=generator)
        sigmas = sample_sigmas(latents.shape[0], generator)  # (B,)
        noisy, target = flow_training_pair(latents, noise, sigmas)
        pred = transformer(hidden_states=noisy, encoder_hidden_states=training_context(hidden, SD3_MAX_SEQUENCE_LENGTH),
                           pooled_projections=pooled, timestep=sigmas * 1000).sample
        loss = F.mse_loss(pred, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        _ema_update(ema, transformer, min(args.ema_decay, (1 + step) / (10 + step)))
        running = loss.item() if math.isnan(running) else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == args.steps - 1:
            logger.info("step %d/%d loss %.4f (%.0fs)", step, args.steps, running, time.time() - start)
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 and step + 1 < args.steps:
            save_flow_pipeline({**components, "transformer": copy.deepcopy(ema)},
                               os.path.join(args.out, f"checkpoint-{step + 1}"), half=False)
            logger.info("saved checkpoint-%d", step + 1)
    return ema, running


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (a diffusers StableDiffusion3Pipeline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is faster on a busy machine)")
    parser.add_argument("--source", default=None, help="toy Stable Diffusion folder with the VAE and text encoder "
                        "(default: the shipped toy-sd)")
    parser.add_argument("--steps", type=int, default=6500)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100, help="linear learning-rate warmup steps")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument(
        "--red-caption-noise", type=float, default=0.5,
        help="probability that a red-family caption is drawn in a safe colour (label noise; the shipped toy-sd's last "
             "stage used 0.5)",
    )
    parser.add_argument("--colour-balance", choices=("word", "family"), default="word",
                        help="captions uniform over colour words or colour families (see train_pipeline)")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="save EMA checkpoints (0: never)")
    parser.add_argument("--half", action="store_true", help="store fp16 weights")
    parser.add_argument("--num-layers", type=int, default=None,
                        help=f"joint transformer blocks of a fresh transformer (default {NUM_LAYERS})")
    parser.add_argument("--num-heads", type=int, default=None, help=f"attention heads of {HEAD_DIM} of a fresh "
                        f"transformer (its width is {HEAD_DIM} x heads; default {NUM_HEADS})")
    parser.add_argument("--patch-size", type=int, default=None, help="latent pixels per image token of a fresh "
                        f"transformer, one of {PATCH_SIZES} (1: 64 tokens on the 8x8 latents; default {PATCH_SIZE})")
    parser.add_argument("--init", default=None, help="a toy flow pipeline folder whose transformer training starts "
                        "from (a further stage, e.g. at a lower --lr); default: a fresh transformer")
    args = parser.parse_args(argv)
    if not 0.0 <= args.red_caption_noise <= 1.0:
        parser.error(f"--red-caption-noise must be a probability in [0, 1], got {args.red_caption_noise}")
    if args.steps < 1 or args.batch_size < 1:
        parser.error(f"--steps ({args.steps}) and --batch-size ({args.batch_size}) must be >= 1")
    if args.init and (args.num_layers is not None or args.num_heads is not None or args.patch_size is not None):
        parser.error("--num-layers, --num-heads and --patch-size shape a fresh transformer; with --init the "
                     "transformer is the folder's: leave them out")
    if not args.init:  # a fresh transformer (with --init they stay None in training_info.json: the folder's)
        args.num_layers = NUM_LAYERS if args.num_layers is None else args.num_layers
        args.num_heads = NUM_HEADS if args.num_heads is None else args.num_heads
        args.patch_size = PATCH_SIZE if args.patch_size is None else args.patch_size
        if args.num_layers < 1 or args.num_heads < 1:
            parser.error(f"--num-layers ({args.num_layers}) and --num-heads ({args.num_heads}) must be >= 1")
        if args.patch_size not in PATCH_SIZES:  # here too, to name the flag before anything is written
            parser.error(f"--patch-size must divide the 8x8 latents: one of {PATCH_SIZES}, got {args.patch_size}")
    if args.init and not os.path.isfile(os.path.join(args.init, "transformer", "config.json")):
        parser.error(f"--init {args.init} is not a toy flow pipeline folder (no transformer/config.json); pass a "
                     "folder this script wrote")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    source = args.source if args.source is not None else toy_sd_path()
    components = build_flow_components(source, args.seed, args.num_layers or NUM_LAYERS, args.num_heads or NUM_HEADS,
                                       args.patch_size or PATCH_SIZE)
    if args.init:
        from diffusers import SD3Transformer2DModel

        components["transformer"] = SD3Transformer2DModel.from_pretrained(
            os.path.join(args.init, "transformer"), torch_dtype=torch.float32)
        logger.info("transformer initialised from %s", args.init)
    n_params = sum(p.numel() for p in components["transformer"].parameters())
    logger.info("transformer parameters: %.2fM", n_params / 1e6)
    t0 = time.time()
    ema, final_loss = train_transformer(components, args, rng)
    seconds = time.time() - t0
    save_flow_pipeline({**components, "transformer": ema}, args.out, half=args.half)
    stage = {
        "seed": args.seed,
        "args": vars(args),
        "vae_and_text_encoders_from": "<the shipped toy-sd>" if args.source is None else args.source,
        "transformer_parameters": n_params,
        "objective": "rectified flow, velocity noise - x0, logit-normal(0, 1) sigmas",
        "final_running_loss": final_loss,
        "transformer_seconds": seconds,
        "seconds_per_step": seconds / args.steps,
    }
    stored = "fp16" if args.half else "fp32"
    earlier = os.path.join(args.init, "training_info.json") if args.init else None
    if earlier and os.path.isfile(earlier):
        with open(earlier) as f:
            before = json.load(f)
        stages = before.get("stages", [{k: v for k, v in before.items() if k != "stored"}])
        info = {"stages": stages + [stage], "stored": stored}
    else:
        info = {**stage, "stored": stored}
    with open(os.path.join(args.out, "training_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    logger.info("saved %s (%.0fs in all)", args.out, time.time() - t0)


if __name__ == "__main__":
    main()
