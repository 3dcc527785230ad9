"""The script-level arguments of `trl-safediffusion train` and `evaluate` (and of examples/safe_grpo_sd15.py): the
model, the prompts, the reward, the output and the evaluation. With `SafeDDPOGRPOConfig` they are the fields of the
command line and of the recipe YAML files (docs/configuration.md lists them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelArguments:
    """The model to train."""

    pretrained_model: str = field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        metadata={"help": "Hub id or local folder of a diffusers pipeline: Stable Diffusion 1.x / 2.x, SDXL, SD3 / SD3.5 "
                  "or FLUX (the adapter is chosen from its model_index.json), or 'toy' for the embedded toy pipeline."},
    )
    pretrained_revision: str = field(default="main", metadata={"help": "Hub revision of pretrained_model."})
    use_lora: bool = field(
        default=True, metadata={"help": "Train LoRA adapters instead of the full UNet (the paper fine-tunes fully)."}
    )
    lora_rank: int = field(default=4, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=4.0, metadata={"help": "LoRA alpha (the adapter scale is alpha / rank)."})
    trainable_modules: str | None = field(
        default=None,
        metadata={"help": "With use_lora=false: train only the UNet parameters whose names contain one of these "
                  "comma-separated parts, e.g. 'attn2' (cross-attention); the rest stays frozen."},
    )
    sample_height: int | None = field(
        default=None,
        metadata={"help": "Image height of the training rollouts, a multiple of the VAE factor (default: the model's "
                  "native size; Flow-GRPO trains SD3.5 at 512 px)."},
    )
    sample_width: int | None = field(
        default=None, metadata={"help": "Image width of the rollouts, as sample_height."}
    )
    guidance: float | None = field(
        default=None,
        metadata={"help": "FLUX only: the distilled guidance fed to the transformer (default: the adapter's, 3.5); "
                  "the CFG scale is sample_guidance_scale (1.0 for FLUX.1-dev)."},
    )


# ModelArguments fields that only some families' adapters take: passed to the adapter when set, under the same name.
FAMILY_OPTIONS = ("sample_height", "sample_width", "guidance")


@dataclass
class DataArguments:
    """The training prompts (the prompt and label columns are the config's `prompt_column` and `label_column`)."""

    dataset: str | None = field(
        default=None,
        metadata={"help": "Prompts: a Hub dataset id (e.g. ItsMaxNorm/SafeDiffusion-R1-dataset) or a local .txt / .csv / "
                  ".jsonl / .json file. Required for `train`."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    dataset_split: str = field(default="train", metadata={"help": "Hub dataset split."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})


REWARDS = ("clip_steering", "brightness")
CLIP_BACKENDS = ("open_clip", "transformers", "toy")


@dataclass
class RewardArguments:
    """The reward (training) or the CLIP model of the CLIP metrics (evaluation)."""

    reward: str = field(
        default="clip_steering",
        metadata={"help": "Reward: 'clip_steering' (SafeDiffusion-R1) or 'brightness' (mean pixel value; smoke tests)."},
    )
    clip_backend: str = field(
        default="open_clip", metadata={"help": "CLIP implementation: 'open_clip', 'transformers' or 'toy' (embedded)."}
    )
    clip_model: str = field(
        default="ViT-H-14",
        metadata={"help": "open_clip architecture name / hf-hub: id / folder, or a transformers CLIPModel id / folder."},
    )
    clip_pretrained: str | None = field(
        default="laion2b_s32b_b79k",
        metadata={"help": "open_clip pretrained tag or checkpoint file (the paper: HPSv2.1, HPS_v2.1_compressed.pt)."},
    )
    clip_model_config: str | None = field(
        default=None, metadata={"help": "An open_clip model config .json to register first (custom architectures)."}
    )
    anchors: str = field(
        default="nudity-compact",
        metadata={"help": "Anchor preset name (nudity-compact, empty-positive, toy-red) or a .json / .txt anchor file. "
                  "With clip_backend toy and this default, toy-red (the toy world's colours) is used."},
    )
    alpha: float = field(default=0.5, metadata={"help": "Steering strength alpha (the paper uses 0.5)."})
    steering_mode: str = field(
        default="translate", metadata={"help": "'translate' (paper) or 'projection' (reference-code variant)."}
    )


@dataclass
class OutputArguments:
    """How the trained model is saved (where: the config's `output_dir`) and what is logged."""

    fuse_lora: bool = field(
        default=False, metadata={"help": "Save a full pipeline with the LoRA fused into the UNet instead of the adapter."}
    )
    log_images: bool = field(
        default=True, metadata={"help": "Log a captioned grid of samples with their rewards every epoch (tracker + PNG)."}
    )
    log_images_every: int = field(default=1, metadata={"help": "Log the sample grid every N epochs."})


METRICS = ("nudenet", "q16", "clip", "toy")


@dataclass
class EvalArguments:
    """`trl-safediffusion evaluate`: generation, prompt set, metrics and outputs."""

    model: str = field(
        default="CompVis/stable-diffusion-v1-4",
        metadata={"help": "Hub id or folder of a diffusers pipeline, or 'toy' for the embedded toy pipeline."},
    )
    lora: str | None = field(default=None, metadata={"help": "Folder or Hub id of LoRA weights to load on the model."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the model."})
    prompts: str = field(
        default="i2p",
        metadata={"help": "'i2p' (AIML-TUDA/i2p), a Hub dataset id, a .txt/.csv/.jsonl/.json file, or 'toy' / "
                  "'toy:<set>' (toy world sets)."},
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column of the prompt text."})
    i2p_categories: list[str] | None = field(
        default=None, metadata={"help": "Keep prompts with any of these I2P categories (e.g. sexual violence)."}
    )
    i2p_hard: bool | None = field(default=None, metadata={"help": "Keep only I2P prompts whose `hard` flag equals this."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N prompts."})
    images_per_prompt: int = field(default=1, metadata={"help": "Images generated per prompt."})
    seed: int = field(default=0, metadata={"help": "Base seed; image k of prompt i uses seed + i * images_per_prompt + k."})
    seed_column: str | None = field(
        default=None, metadata={"help": "Prompt-set column with per-prompt seeds (I2P: sd_seed); overrides `seed`."}
    )
    batch_size: int = field(default=8, metadata={"help": "Images per pipeline call."})
    num_inference_steps: int = field(default=50, metadata={"help": "Sampler steps."})
    guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance weight."})
    height: int | None = field(default=None, metadata={"help": "Image height (default: the model's)."})
    width: int | None = field(default=None, metadata={"help": "Image width (default: the model's)."})
    negative_prompt: str | None = field(default=None, metadata={"help": "Negative prompt for every image."})
    metrics: list[str] = field(
        default_factory=lambda: ["clip"],
        metadata={"help": "Metrics among nudenet (needs the [eval] extra), q16 (needs --q16_prompts), clip, toy."},
    )
    nudenet_threshold: float = field(default=0.6, metadata={"help": "NudeNet minimum detection score (I2P: 0.6)."})
    q16_prompts: str | None = field(
        default=None, metadata={"help": "Q16 prompt-embedding file (prompts.p from the Q16 release, or .npy/.pt)."}
    )
    q16_clip_model: str = field(default="ViT-L-14", metadata={"help": "open_clip model of Q16 (Q16 needs ViT-L/14)."})
    q16_clip_pretrained: str = field(default="openai", metadata={"help": "open_clip pretrained tag of Q16's CLIP."})
    dtype: str = field(
        default="auto", metadata={"help": "Weights dtype: 'auto' (fp16 on CUDA, fp32 on CPU), 'float32', 'float16', "
                                  "'bfloat16'."}
    )
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})
    output_dir: str = field(default="eval_outputs", metadata={"help": "Folder of results.json, the table and grid."})
    save_images: bool = field(default=True, metadata={"help": "Write every image as PNG under output_dir/images."})
    grid_size: int = field(default=16, metadata={"help": "Images in the captioned grid (0: none)."})
    table_format: str = field(default="jsonl", metadata={"help": "Per-image table format: 'jsonl' or 'parquet'."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Dataset repo id to publish the results to."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (never written to disk)."})
