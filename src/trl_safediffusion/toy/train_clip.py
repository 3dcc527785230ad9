"""Train the toy CLIP (an open_clip model from a custom config) contrastively on the toy world.

Captions are full ("two blue triangles") or partial ("blue triangles", "two triangles", "two blue shapes",
"blue shapes"); a caption is a positive for every image of the batch it is consistent with, at the level of the
detectors (the red family is one colour), so the loss is a multi-positive InfoNCE (CLIP, arXiv 2103.00020, with soft
targets). This makes the text tower embed `crimson` and `scarlet` next to `red`, and puts the anchor phrases
("blue shapes", "red shapes") in distribution.

    python -m trl_safediffusion.toy.train_clip --out toy_clip --seed 0

writes `<out>/toy-clip.json` (the open_clip config) and `<out>/toy-clip.safetensors`.

`--hard-negatives F` adds `F * batch_size` images per step that the world never draws but a policy under RL can:
four objects (consistent only with captions that name no count), grey objects (only with captions that name no
colour) and the empty background (consistent with no caption, so only a negative). A reward model that has never seen
them scores them by extrapolation; the demo's policy found that the shipped CLIP pays more for four safe-coloured
objects than for the three a `red` prompt asks for, and for grey objects over red ones (docs/research/toy_world_trials.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from .clip import TOY_CLIP_NAME
from .world import (
    BACKGROUND_RGB,
    COUNT_WORDS,
    IMAGE_SIZE,
    PALETTE,
    colour_family,
    draw_batch,
    paint_objects,
    sample_spec,
)

logger = logging.getLogger(__name__)

TOY_CLIP_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 64, "layers": 3, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2, "mlp_ratio": 2.0},
}


def training_caption(spec, rng: np.random.Generator, full_probability: float = 0.6) -> tuple[str, tuple]:
    """A full or partial caption of a spec and its key `(colour, shape, count)` with `None` for dropped attributes."""
    plural = spec.count > 1
    if rng.random() < full_probability:
        form = "full"
    else:
        form = ("no_count", "no_shape", "no_colour", "colour_only")[rng.integers(4)]
    count_word = "one" if spec.count == 1 and rng.random() < 0.3 else COUNT_WORDS[spec.count]
    noun = spec.shape + ("s" if plural else "")
    colour = colour_family(spec.colour_word)
    if form == "full":
        return f"{count_word} {spec.colour_word} {noun}", (colour, spec.shape, spec.count)
    if form == "no_count":
        return f"{spec.colour_word} {spec.shape}s", (colour, spec.shape, None)
    if form == "no_shape":
        return f"{count_word} {spec.colour_word} shape" + ("s" if plural else ""), (colour, None, spec.count)
    if form == "no_colour":
        return f"{count_word} {noun}", (None, spec.shape, spec.count)
    return f"{spec.colour_word} shapes", (colour, None, None)


def consistency(keys: list[tuple], specs: list) -> torch.Tensor:
    """(B_img, B_txt) float matrix: 1 where caption key j is consistent with image spec i."""
    truth = np.array([(s.colour, s.shape, str(s.count)) for s in specs])  # (B_img, 3)
    key = np.array([[("" if k is None else str(k)) for k in kk] for kk in keys])  # (B_txt, 3), "" = any
    match = (key[None, :, :] == "") | (key[None, :, :] == truth[:, None, :])  # (B_img, B_txt, 3)
    return torch.from_numpy(match.all(-1).astype(np.float32))


HARD_NEGATIVE_KINDS = ("four", "grey", "empty")


class _Key:
    """What `consistency` reads of an image: detector-level colour, shape and count (strings may be off-world)."""

    def __init__(self, colour: str, shape: str, count: str):
        self.colour, self.shape, self.count = colour, shape, count


def hard_negative(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, _Key]:
    """A uint8 (32, 32, 3) image of `kind` (one of `HARD_NEGATIVE_KINDS`) and its key for `consistency`.

    "four": four objects of one shape and world colour (matches captions without a count); "grey": 1-3 objects of a
    grey level in [50, 200] (matches captions without a colour); "empty": the background alone (matches none).
    """
    if kind not in HARD_NEGATIVE_KINDS:
        raise ValueError(f"kind must be one of {HARD_NEGATIVE_KINDS}, got {kind!r}")
    spec = sample_spec(rng)
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float64)
    image[:] = np.asarray(BACKGROUND_RGB, dtype=np.float64) + rng.uniform(-6, 6)
    if kind == "empty":
        return np.clip(np.rint(image), 0, 255).astype(np.uint8), _Key("none", "none", "0")
    if kind == "four":
        count, colour = 4, colour_family(spec.colour_word)
        rgb = np.clip(np.asarray(PALETTE[spec.colour_word], dtype=np.float64) * rng.uniform(0.9, 1.05), 0, 255)
    else:
        count, colour = spec.count, "grey"
        rgb = np.full(3, rng.uniform(50, 200))
    paint_objects(image, spec.shape, rgb, count, rng)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), _Key(colour, spec.shape, str(count))


def main(argv: list[str] | None = None) -> None:
    import open_clip

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--half", action="store_true", help="store fp16 weights")
    parser.add_argument("--hard-negatives", type=float, default=0.0,
                        help="extra off-world images per step, as a fraction of the batch (see above); 0 disables")
    parser.add_argument("--hard-negative-kinds", default=",".join(HARD_NEGATIVE_KINDS),
                        help=f"comma-separated kinds of --hard-negatives, of {HARD_NEGATIVE_KINDS}")
    parser.add_argument("--init", default=None, help="start from this toy CLIP folder's weights (fine-tuning)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.hard_negatives <= 1.0:
        parser.error(f"--hard-negatives must be in [0, 1], got {args.hard_negatives}")
    n_hard = int(round(args.hard_negatives * args.batch_size))
    kinds = [k.strip() for k in args.hard_negative_kinds.split(",") if k.strip()]
    if n_hard and (not kinds or any(k not in HARD_NEGATIVE_KINDS for k in kinds)):
        parser.error(f"--hard-negative-kinds must name some of {HARD_NEGATIVE_KINDS}, got {args.hard_negative_kinds!r}")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    config_path = os.path.join(args.out, f"{TOY_CLIP_NAME}.json")
    with open(config_path, "w") as f:
        json.dump(TOY_CLIP_CONFIG, f, indent=2)
    open_clip.add_model_config(config_path)
    torch.manual_seed(args.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(TOY_CLIP_NAME)
    tokenizer = open_clip.get_tokenizer(TOY_CLIP_NAME)
    if args.init:
        from safetensors.torch import load_file

        state = load_file(os.path.join(args.init, f"{TOY_CLIP_NAME}.safetensors"))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    logger.info("parameters: %.2fM", sum(p.numel() for p in model.parameters()) / 1e6)
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    rng = np.random.default_rng(args.seed)
    model.train()
    start, running = time.time(), None
    for step in range(args.steps):
        warmup = 100
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        specs = [sample_spec(rng) for _ in range(args.batch_size)]
        captions, keys = zip(*(training_caption(s, rng) for s in specs))
        drawn = draw_batch(specs, rng)
        image_keys = list(specs)
        if n_hard:
            extra = [hard_negative(kinds[rng.integers(len(kinds))], rng) for _ in range(n_hard)]
            drawn = np.concatenate([drawn, np.stack([image for image, _ in extra])])
            image_keys += [key for _, key in extra]
        images = torch.from_numpy(drawn).permute(0, 3, 1, 2).float() / 255.0
        image_features = F.normalize(model.encode_image((images - mean) / std), dim=-1)
        text_features = F.normalize(model.encode_text(tokenizer(list(captions))), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T  # (B_img, B_txt)
        target = consistency(list(keys), image_keys)
        # image -> caption over the images that some caption describes (an empty image has none)
        has_positive = target.sum(1) > 0
        t_i = target[has_positive]
        loss_i = -(t_i / t_i.sum(1, keepdim=True) * logits[has_positive].log_softmax(1)).sum(1).mean()
        loss_t = -(target.T / target.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
        loss = 0.5 * (loss_i + loss_t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 50 == 0 or step == args.steps - 1:
            logger.info("clip step %d/%d loss %.4f scale %.1f (%.0fs)", step, args.steps, running, model.logit_scale.exp().item(), time.time() - start)
    from safetensors.torch import save_file

    state = {k: (v.half() if args.half and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(args.out, f"{TOY_CLIP_NAME}.safetensors"))
    with open(os.path.join(args.out, "training_info.json"), "w") as f:
        json.dump({"seed": args.seed, "args": vars(args), "seconds": time.time() - start}, f, indent=2)
    logger.info("saved %s (%.0fs)", args.out, time.time() - start)


if __name__ == "__main__":
    main()
