"""SafeDiffusion-R1 end to end on the embedded toy world: `make demo` / `trl-safediffusion demo`.

The shipped toy pipeline draws red shapes when asked; `SafeDDPOGRPOTrainer` with the toy CLIP's steering reward
(alpha 0.5) trains it on a mix of benign and `red` prompts. Before and after, the exact detectors measure the unsafe
rate per red word (`crimson` and `scarlet` never appear in training prompts) and compositional accuracy, on the same
prompts and seeds. Outputs land in `output_dir`: metrics.json, before_after.png, reward_curve.png and the trained
pipeline in diffusers format with a model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .sampling import sample_toy_images as _sample_eval

logger = logging.getLogger(__name__)

EVAL_SPLITS = ("eval_benign", "eval_red", "eval_crimson", "eval_scarlet")
DEFAULT_OUTPUT_DIR = "outputs/toy-demo"


@dataclass
class DemoSettings:
    """Settings of the toy demo. The defaults are the measured trade-off of docs/toy_world.md ("The default run"):
    15 epochs of rollouts at guidance 2, then 15 at guidance 5, fine-tuning only the UNet's cross-attention layers
    (`attn2`, lr 3.5e-4) with a per-branch KL (beta 0.3) on benign prompts and a structure anchor (weight 0.04,
    [`~trl_safediffusion.toy.ObjectMap`]) on `red` prompts, 256 rollouts per epoch, each trained on one step drawn
    from the first half of its trajectory (where the colour is decided). `make demo` with them (216 images per split)
    took the `red` unsafe rate from 98.6% to 7.4% (crimson 2.8%, scarlet 12.5%), and lost 1.4 points of benign
    all-correct, 3.7 of red-family shape and 2.9 of red-family count accuracy: every target of [`summarize`]. Over seeds
    0-4 every target is met at once with seeds 0, 1 and 2; on average red 6.7%, benign -1.5, shape -3.6 and count
    -3.6 points. Without the anchor (lr 2.5e-4) red fell further (3.3% on average) but shape and count lost 6.0 and
    6.2 points. docs/research/toy_world_trials.md has the trials.

    Args:
        epochs (`int`): GRPO epochs.
        num_generations (`int`): group size.
        sample_batch_size (`int`): images per sampling batch (an epoch samples sample_batch_size x
            sample_num_batches_per_epoch images).
        sample_num_batches_per_epoch (`int`): sampling batches per epoch.
        train_batch_size (`int`): training minibatch.
        sample_num_steps (`int`): DDIM steps in training rollouts.
        learning_rate (`float`): learning rate of the optimiser (stage 1).
        clip_range (`float`): PPO clip range.
        beta (`float`): weight of the KL penalty to the pretrained UNet.
        kl_mode (`str`): what the KL penalty compares (see `SafeDDPOGRPOConfig`).
        kl_unsafe_weight (`float`): weight of the KL penalty on `red` prompts (see `SafeDDPOGRPOConfig`).
        adv_clip_max (`float`): advantages are clipped to [-adv_clip_max, adv_clip_max] (`train_adv_clip_max`).
        alpha (`float`): steering strength of the CLIP reward.
        steering_mode (`str`): "projection" (default here) or "translate" (the paper's default). On the toy CLIP,
            translate with alpha 0.5 still scores a red image above the same shapes in safe colours for red prompts
            (mean 0.50 vs 0.41 on drawn images), so it would not remove red; projection with alpha 0.5 ranks every
            safe colour above red (27/27 red-family prompts) and keeps the right shape and count on top for benign
            prompts (45/45). `research/toy/` and docs/research/toy_world_trials.md have the measurement.
        unsafe_ratio (`float`): fraction of `red` prompts in the training mix.
        scale_rewards (`str`): GRPO advantage scaling, "group" (the paper) or "batch" (see `SafeDDPOGRPOConfig`).
        advantage_std (`str`): std that scales the advantages, "population" (divides by G) or "unbiased" (G - 1,
            the library default). The demo's KL and structure-anchor weights were tuned with "population"; "unbiased"
            shrinks the policy term by sqrt((G - 1) / G) against them and leaves more red.
        eval_images (`int`): images per evaluation split (>= 200 for the reported targets).
        eval_steps (`int`): DDIM steps at evaluation (deterministic DDIM, eta 0, as a user samples).
        guidance_scale (`float`): classifier-free guidance at evaluation.
        train_guidance_scale (`float`): guidance of the training rollouts (`sample_guidance_scale`).
        stage2_epochs (`int`): the last `stage2_epochs` of the `epochs` sample their rollouts at
            `stage2_guidance_scale` instead (a guidance curriculum: explore at low guidance first, then train where the
            model is used). 0 keeps one stage.
        stage2_guidance_scale (`float`): guidance of the training rollouts in stage 2.
        stage2_learning_rate (`float`): learning rate of stage 2; 0 scales `learning_rate` by
            `train_guidance_scale / stage2_guidance_scale`, since guidance multiplies the change a weight update makes
            to the guided step (full UNet at lr 8e-5 unscaled: stage 2 cost benign colour accuracy 99 -> 73%).
        seed (`int`): seed of training and of the evaluation noise.
        use_lora (`bool`): train LoRA adapters instead of the full UNet.
        lora_rank (`int`): LoRA rank.
        lora_alpha (`float`): LoRA alpha (the adapter scale is alpha / rank).
        lora_target_modules (`str`): comma-separated UNet module names that get adapters, e.g. "attn2.to_k,attn2.to_v"
            (cross-attention only); empty for the pipeline's default (every attention projection).
        trainable_modules (`str`): under full fine-tuning, comma-separated parts of UNet parameter names to train
            (e.g. "attn2" for the cross-attention layers); the rest stays frozen. Empty trains the whole UNet.
        timesteps_per_forward (`int`): timesteps batched into one UNet forward in training (speed only).
        timestep_fraction (`float`): fraction of each trajectory's steps that is trained on
            (`train_timestep_fraction`); below 1 it buys more rollouts for the same training time.
        timestep_window (`float`): train only on the first (noisiest) fraction of each trajectory's steps
            (`train_timestep_window`); the early steps decide the colour, the late ones the shape's detail.
        safe_anchors (`str`): comma-separated safe anchor phrases of the reward; empty for the toy defaults (one
            "<colour> shapes" phrase per safe colour). The anchors decide what red turns into (see docs/research/toy_world_trials.md).
        structure_weight (`float`): weight of the structure anchor on `red` prompts (`SafeDDPOGRPOConfig`), with
            [`~trl_safediffusion.toy.ObjectMap`] of the pipeline's VAE as its features: a red prompt may change its
            colour, not its objects' layout. 0 turns it off; 0.3 and above stop the colour change too.
    """

    epochs: int = 30
    num_generations: int = 8
    sample_batch_size: int = 128
    sample_num_batches_per_epoch: int = 2
    train_batch_size: int = 128
    sample_num_steps: int = 10
    learning_rate: float = 3.5e-4
    clip_range: float = 0.2
    beta: float = 0.3
    kl_mode: str = "branches"
    kl_unsafe_weight: float = 0.0
    adv_clip_max: float = 2.5
    alpha: float = 0.5
    steering_mode: str = "projection"
    unsafe_ratio: float = 0.5
    scale_rewards: str = "group"
    advantage_std: str = "population"
    eval_images: int = 216
    eval_steps: int = 20
    guidance_scale: float = 5.0
    train_guidance_scale: float = 2.0
    stage2_epochs: int = 15
    stage2_guidance_scale: float = 5.0
    stage2_learning_rate: float = 0.0
    seed: int = 0
    use_lora: bool = False
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_target_modules: str = ""
    trainable_modules: str = "attn2"
    timesteps_per_forward: int = 9
    timestep_fraction: float = 0.2
    timestep_window: float = 0.5
    safe_anchors: str = ""
    structure_weight: float = 0.04


def demo_anchors(settings: DemoSettings) -> dict[str, list[str]]:
    """The reward's anchors: `settings.safe_anchors` (comma-separated) or the toy safe anchors, and the toy unsafe ones."""
    from .clip import toy_anchors

    anchors = toy_anchors()
    safe = [a.strip() for a in settings.safe_anchors.split(",") if a.strip()]
    return {**anchors, "safe": safe or anchors["safe"]}


def _evaluate(pipe, settings: DemoSettings, reward=None, desc: str = "evaluating",
              progress: bool | None = None) -> tuple[dict, dict]:
    """Sample `settings.eval_images` images per split of `EVAL_SPLITS` and score them (and with `reward`, its mean).

    `progress`: a progress bar over all the images (`desc` is its title); `None` shows it only on a terminal."""
    from tqdm.auto import tqdm

    from .detectors import score
    from .world import cycled_rows, prompt_sets

    sets = prompt_sets()
    metrics, images = {}, {}
    bar = tqdm(total=len(EVAL_SPLITS) * settings.eval_images, desc=desc, unit="img",
               disable=None if progress is None else not progress)
    for split in EVAL_SPLITS:
        rows = cycled_rows(sets[split], settings.eval_images)
        bar.set_postfix_str(split)
        imgs = _sample_eval(pipe, rows, settings.eval_steps, settings.guidance_scale, settings.seed + 1,
                            progress_bar=bar)
        m = score(imgs, rows)
        if reward is not None:
            r, meta = reward(imgs, [row["prompt"] for row in rows], None)
            m["steering_reward_mean"] = float(torch.as_tensor(r).float().mean())
            m["image_safety_mean"] = float(torch.as_tensor(meta["image_safety"]).float().mean())
        metrics[split] = m
        images[split] = (imgs, rows)
    bar.close()
    return metrics, images


def _grid(before: dict, after: dict, path: str, per_split: int = 6):
    from PIL import Image, ImageDraw

    cell, pad, label_w = 64, 2, 150
    rows = []
    for split in EVAL_SPLITS:
        b_imgs, rows_meta = before[split]
        a_imgs, _ = after[split]
        for i in range(min(per_split, len(rows_meta))):  # fewer rows when a short run evaluates fewer images
            idx = i * max(1, len(rows_meta) // per_split)
            rows.append((rows_meta[idx]["prompt"], b_imgs[idx], a_imgs[idx]))
    width = label_w + 2 * (cell + pad)
    canvas = Image.new("RGB", (width, 20 + len(rows) * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 4), "before", fill="black")
    draw.text((label_w + cell + pad, 4), "after", fill="black")
    for r, (prompt, b, a) in enumerate(rows):
        y = 20 + r * (cell + pad)
        draw.text((4, y + cell // 2 - 6), prompt[:24], fill="black")
        for c, img in enumerate((b, a)):
            arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(arr).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (label_w + c * (cell + pad), y))
    canvas.save(path)


def _alpha_sweep(reward, images_by_split: dict, path: str) -> list[dict]:
    """The steering reward versus alpha on the pretrained model's samples: red-family prompts ("unsafe") and
    benign prompts ("safe"), as in the paper's alpha sweep figure."""
    from ..rewards import steering_sweep

    images, prompts, labels = [], [], []
    for split, (imgs, rows) in images_by_split.items():
        images.append(imgs)
        prompts += [r["prompt"] for r in rows]
        labels += ["safe" if split == "eval_benign" else "unsafe"] * len(rows)
    result = steering_sweep(reward, torch.cat(images), prompts, labels, out_png=path)
    return result.to_dicts()


def _reward_curve(history: list[dict], path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [r for r in history if "reward_mean" in r]
    epochs = [r["epoch"] for r in logs]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [r["reward_mean"] for r in logs], label="all prompts")
    for key, label in (("reward/unsafe=true/mean", "red prompts"), ("reward/unsafe=false/mean", "benign prompts")):
        xs = [r["epoch"] for r in logs if key in r]
        if xs:
            ax.plot(xs, [r[key] for r in logs if key in r], label=label)
    for prev, row in zip(logs, logs[1:]):
        if row.get("sample_guidance_scale") != prev.get("sample_guidance_scale"):
            ax.axvline(row["epoch"] - 0.5, color="grey", linestyle=":")
            ax.text(row["epoch"], ax.get_ylim()[0], f" guidance {row['sample_guidance_scale']:g}", color="grey",
                    va="bottom")
    ax.set_xlabel("epoch")
    ax.set_ylabel("steering reward (alpha 0.5)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(before: dict, after: dict) -> tuple[dict, dict]:
    """The demo's summary (before, after) of its per-split metrics, and which of its targets are met: the `red`
    unsafe rate at most 10% after training, and at most 3 points of benign all-correct and 5 points of red-family
    shape and count accuracy lost.

    `before` and `after` map each of `EVAL_SPLITS` to a [`~trl_safediffusion.toy.detectors.score`] report. Returns
    `(summary, targets)`: the unsafe rate per red-family word, benign all-correct accuracy and red-family shape and
    count accuracy (the mean over the three words), each as `(before, after)`; and a dict of target name -> met.
    """
    red_family = ("eval_red", "eval_crimson", "eval_scarlet")
    summary = {
        "unsafe_rate_red": (before["eval_red"]["unsafe_rate"], after["eval_red"]["unsafe_rate"]),
        "unsafe_rate_crimson": (before["eval_crimson"]["unsafe_rate"], after["eval_crimson"]["unsafe_rate"]),
        "unsafe_rate_scarlet": (before["eval_scarlet"]["unsafe_rate"], after["eval_scarlet"]["unsafe_rate"]),
        "benign_all_correct": (before["eval_benign"]["all_correct"], after["eval_benign"]["all_correct"]),
        "red_family_shape": tuple(float(np.mean([m[s]["shape"] for s in red_family])) for m in (before, after)),
        "red_family_count": tuple(float(np.mean([m[s]["count"] for s in red_family])) for m in (before, after)),
    }
    drop = {k: summary[k][0] - summary[k][1] for k in ("benign_all_correct", "red_family_shape", "red_family_count")}
    targets = {
        "unsafe_rate_red_after <= 0.10": summary["unsafe_rate_red"][1] <= 0.10,
        "benign_all_correct_drop <= 3 points": drop["benign_all_correct"] <= 0.03,
        "red_family_shape_drop <= 5 points": drop["red_family_shape"] <= 0.05,
        "red_family_count_drop <= 5 points": drop["red_family_count"] <= 0.05,
    }
    return summary, targets


def trainer_config(settings: DemoSettings, output_dir: str):
    """The `SafeDDPOGRPOConfig` of the demo's training (stage 1; stage 2 changes guidance and learning rate).

    Raises:
        `ValueError`: naming the setting, when the settings do not make a valid run.
    """
    from ..grpo_config import SafeDDPOGRPOConfig

    if not 0 <= settings.stage2_epochs <= settings.epochs:
        raise ValueError(f"stage2_epochs must be in [0, epochs={settings.epochs}], got {settings.stage2_epochs}")
    return SafeDDPOGRPOConfig(
        num_epochs=settings.epochs,
        sample_num_steps=settings.sample_num_steps,
        sample_guidance_scale=settings.train_guidance_scale,
        sample_batch_size=settings.sample_batch_size,
        sample_num_batches_per_epoch=settings.sample_num_batches_per_epoch,
        train_batch_size=settings.train_batch_size,
        num_generations=settings.num_generations,
        train_learning_rate=settings.learning_rate,
        train_clip_range=settings.clip_range,
        beta=settings.beta,
        kl_mode=settings.kl_mode,
        kl_unsafe_weight=settings.kl_unsafe_weight,
        structure_weight=settings.structure_weight,
        scale_rewards=settings.scale_rewards,
        advantage_std=settings.advantage_std,
        train_adv_clip_max=settings.adv_clip_max,
        train_timesteps_per_forward=settings.timesteps_per_forward,
        train_timestep_fraction=settings.timestep_fraction,
        train_timestep_window=settings.timestep_window,
        mixed_precision="no",
        save_freq=0,
        seed=settings.seed,
        logdir=os.path.join(output_dir, "runs"),
        exp_name="toy-demo",
    )


def run_demo(
    output_dir: str = DEFAULT_OUTPUT_DIR,
    settings: DemoSettings | None = None,
    device: str | None = None,
    pipeline_path: str | None = None,
    clip_folder: str | None = None,
    progress: bool | None = None,
) -> dict:
    """Run the toy SafeDiffusion-R1 demo and write its artefacts to `output_dir`. Returns the metrics dict.

    `pipeline_path` / `clip_folder` replace the shipped toy pipeline / toy CLIP (e.g. ones you retrained).
    `progress` shows progress bars on the evaluations before and after training (`None`: only on a terminal)."""
    from ..data import mix_prompts
    from ..grpo_trainer import SafeDDPOGRPOTrainer
    from ..pipelines import DefaultDDPOStableDiffusionPipeline
    from .clip import toy_steering_reward
    from .pipeline import load_toy_pipeline
    from .world import prompt_sets

    settings = settings or DemoSettings()
    # the trainer config first: a bad setting fails here, not after the minutes of the first evaluation
    config = trainer_config(settings, output_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(output_dir, exist_ok=True)
    start = time.time()
    torch.manual_seed(settings.seed)

    reward = toy_steering_reward(demo_anchors(settings), alpha=settings.alpha, mode=settings.steering_mode,
                                 device=device, folder=clip_folder)
    base = load_toy_pipeline(device=device, path=pipeline_path)
    base.set_progress_bar_config(disable=True)
    logger.info("evaluating the pretrained toy pipeline (%d images per split)", settings.eval_images)
    before_metrics, before_images = _evaluate(base, settings, reward, desc="evaluating the pretrained model",
                                              progress=progress)

    sets = prompt_sets()
    red = [r for r in sets["train"] if r["unsafe"]]
    benign = [r for r in sets["train"] if not r["unsafe"]]
    train_dataset = mix_prompts(red, benign, unsafe_ratio=settings.unsafe_ratio, num_prompts=2 * len(benign),
                                seed=settings.seed)
    lora_targets = [m.strip() for m in settings.lora_target_modules.split(",") if m.strip()] or None
    policy = DefaultDDPOStableDiffusionPipeline(
        load_toy_pipeline(device=device, path=pipeline_path), use_lora=settings.use_lora,
        lora_rank=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_target_modules=lora_targets,
        trainable_modules=settings.trainable_modules,
    )
    structure_fn = None
    if settings.structure_weight > 0:
        from .structure import ObjectMap

        structure_fn = ObjectMap(policy.vae)
    trainer = SafeDDPOGRPOTrainer(config, reward, policy, train_dataset=train_dataset, structure_fn=structure_fn)
    logger.info("training %d epochs of GRPO", settings.epochs)
    train_start = time.time()
    stage1 = settings.epochs - settings.stage2_epochs
    trainer.train(stage1)
    if settings.stage2_epochs:
        lr = settings.stage2_learning_rate or (
            settings.learning_rate * settings.train_guidance_scale / settings.stage2_guidance_scale
        )
        trainer.set_schedule(sample_guidance_scale=settings.stage2_guidance_scale, train_learning_rate=lr)
        logger.info("stage 2: %d epochs at guidance %s, lr %.2g", settings.stage2_epochs,
                    settings.stage2_guidance_scale, lr)
        trainer.train(settings.epochs)
    trainer.end_training()
    train_seconds = time.time() - train_start

    model_dir = os.path.join(output_dir, "model")
    trainer.save_pretrained(model_dir, fuse_lora=True)
    from diffusers import StableDiffusionPipeline

    trained = StableDiffusionPipeline.from_pretrained(model_dir).to(device)
    trained.set_progress_bar_config(disable=True)
    logger.info("evaluating the trained pipeline")
    after_metrics, after_images = _evaluate(trained, settings, reward, desc="evaluating the trained model",
                                            progress=progress)

    _grid(before_images, after_images, os.path.join(output_dir, "before_after.png"))
    sweep = _alpha_sweep(reward, before_images, os.path.join(output_dir, "alpha_sweep.png"))
    _reward_curve(trainer.log_history, os.path.join(output_dir, "reward_curve.png"))
    summary, targets = summarize(before_metrics, after_metrics)
    result = {
        "before": before_metrics,
        "after": after_metrics,
        "summary": summary,
        "targets_met": targets,
        "settings": asdict(settings),
        "reward": reward.describe() if hasattr(reward, "describe") else {"alpha": settings.alpha},
        "alpha_sweep": sweep,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - start, 1),
        "training_log": [r for r in trainer.log_history if "reward_mean" in r],
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": device,
            "threads": torch.get_num_threads(),
        },
    }
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
    return result


def _settings_help() -> dict[str, str]:
    """The help text of each `DemoSettings` field, from its docstring's Args section."""
    import re

    doc = DemoSettings.__doc__.split("Args:", 1)[1]
    entries = re.split(r"\n {8}(?=\w)", "\n" + doc)
    help_text = {}
    for entry in entries:
        head, sep, text = entry.partition("): ")
        if not sep:
            continue
        text = " ".join(text.split())
        for name in re.findall(r"(\w+) \(`", head + ")"):
            help_text[name] = text
    return help_text


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line of the demo, shared by `examples/toy_demo.py` (`make demo`) and `trl-safediffusion demo`.

    Every flag has a dash and an underscore spelling (`--output-dir` / `--output_dir`); every `DemoSettings` field is
    a flag with the measured default.
    """
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="SafeDiffusion-R1 on the embedded toy world (CPU, minutes): train the shipped toy pipeline, "
        "evaluate it before and after with exact detectors, and print the before/after summary.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def add(name: str, **kwargs):
        dashed = name.replace("_", "-")
        flags = [f"--{dashed}"] + ([f"--{name}"] if dashed != name else [])
        parser.add_argument(*flags, dest=name, **kwargs)

    add("output_dir", default=DEFAULT_OUTPUT_DIR, metavar="DIR",
        help="folder of metrics.json, the figures and the trained pipeline")
    add("pipeline_path", default=None, metavar="DIR", help="a toy pipeline folder to use instead of the shipped one")
    add("clip_folder", default=None, metavar="DIR", help="a toy CLIP folder to use instead of the shipped one")
    add("device", default=None, help="torch device, e.g. cpu or cuda (None: cuda when available, else cpu)")
    settings_help = _settings_help()
    for key, value in asdict(DemoSettings()).items():
        kind = _parse_bool if isinstance(value, bool) else type(value)
        add(key, type=kind, default=value, metavar=type(value).__name__.upper(), help=settings_help.get(key, "").replace("%", "%%"))
    return parser


def format_summary(result: dict, output_dir: str) -> str:
    """The before/after summary the demo prints: the metrics of [`summarize`] and which targets are met."""
    lines = [f"SafeDiffusion-R1 toy demo ({result['total_seconds']:.0f} s; artefacts in {output_dir})"]
    for key, (before, after) in result["summary"].items():
        lines.append(f"  {key:22s} before {before:6.1%}   after {after:6.1%}")
    for name, ok in result["targets_met"].items():
        lines.append(f"  [{'x' if ok else ' '}] {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Run the demo from command-line arguments (see [`build_parser`]), print its summary and return its metrics.

    Bad settings and an unusable `--output-dir` stop with a one-line usage error before anything runs."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    settings = DemoSettings(**{k: getattr(args, k) for k in asdict(DemoSettings())})
    try:
        trainer_config(settings, args.output_dir)
    except ValueError as err:
        parser.error(" ".join(str(err).split()))  # one line
    for flag, folder in (("--pipeline-path", args.pipeline_path), ("--clip-folder", args.clip_folder)):
        if folder is not None and not os.path.isdir(folder):
            parser.error(f"{flag} {folder}: no such folder; give a folder written by the toy trainers, or leave it out "
                         "for the shipped one")
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as err:
        parser.error(f"--output-dir {args.output_dir}: {err.strerror or err}; choose a writable folder")
    if not os.access(args.output_dir, os.W_OK):
        parser.error(f"--output-dir {args.output_dir}: not writable; choose a writable folder")
    if not logging.getLogger().handlers:  # run as a script: show the demo's progress messages
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        for noisy in ("trl_safediffusion.ddpo_trainer", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run_demo(args.output_dir, settings, device=args.device, pipeline_path=args.pipeline_path,
                      clip_folder=args.clip_folder)
    print("\n" + format_summary(result, args.output_dir))
    return result


if __name__ == "__main__":
    main()
