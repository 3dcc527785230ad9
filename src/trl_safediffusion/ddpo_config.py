"""`DDPOConfig`: the configuration of TRL v0.23.1's DDPO trainer (same field names and defaults), validated."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

CLI_EXP_NAME = "trl-safediffusion"


def _default_exp_name() -> str:
    """The launching script's file name without `.py` (TRL's default); our command line is `trl-safediffusion`
    however it is launched (console script, `python -m trl_safediffusion.cli`, torchrun, accelerate launch)."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    base = os.path.basename(argv0)
    parts = os.path.normpath(argv0).split(os.sep)
    if base.startswith(CLI_EXP_NAME) or parts[-2:] in (["trl_safediffusion", "cli.py"], ["trl_safediffusion", "__main__.py"]):
        return CLI_EXP_NAME
    return base[: -len(".py")] if base.endswith(".py") else (base or "ddpo")


_MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")
_LOG_WITH = ("wandb", "tensorboard", "trackio", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "all")


@dataclass
class DDPOConfig:
    r"""
    Configuration of [`DDPOTrainer`]. The field names and defaults are those of TRL v0.23.1's `DDPOConfig`, so a script
    written for TRL's DDPO keeps working; every field has a `help` string so `transformers.HfArgumentParser` (and our
    command line) can expose it. Cross-field checks run in `__post_init__` and name the field to change.

    Fields added by this library are marked *(trl-safediffusion)* in their help text.
    """

    exp_name: str = field(
        default_factory=_default_exp_name,
        metadata={"help": "Name of this experiment (by default the launching script's file name without `.py`)."},
    )
    run_name: str = field(default="", metadata={"help": "Name of this run."})
    seed: int = field(default=0, metadata={"help": "Random seed (sampling noise, prompt order, minibatch order)."})
    log_with: str | None = field(
        default=None,
        metadata={
            "help": "Tracker used through accelerate: 'tensorboard', 'wandb', 'trackio', ... or None for no tracker.",
        },
    )
    tracker_kwargs: dict = field(
        default_factory=dict, metadata={"help": "Keyword arguments for the tracker (e.g. wandb_project)."}
    )
    accelerator_kwargs: dict = field(default_factory=dict, metadata={"help": "Keyword arguments for the Accelerator."})
    project_kwargs: dict = field(
        default_factory=dict,
        metadata={"help": "Keyword arguments for accelerate's ProjectConfiguration (e.g. `project_dir`, `logging_dir`)."},
    )
    tracker_project_name: str = field(default="trl", metadata={"help": "Name of the project used by the tracker."})
    logdir: str = field(
        default="logs",
        metadata={"help": "Top-level directory for logs and checkpoints (used when project_kwargs has no project_dir)."},
    )
    num_epochs: int = field(default=100, metadata={"help": "Number of epochs to train."})
    save_freq: int = field(default=1, metadata={"help": "Number of epochs between checkpoints (0 disables them)."})
    num_checkpoint_limit: int = field(
        default=5, metadata={"help": "Number of complete checkpoints to keep; older ones are deleted."}
    )
    mixed_precision: str = field(
        default="fp16",
        metadata={"help": "Mixed precision: 'no', 'fp16' or 'bf16'. Frozen weights are cast; trainable weights stay fp32."},
    )
    allow_tf32: bool = field(default=True, metadata={"help": "Allow TF32 matmuls on Ampere or newer GPUs."})
    resume_from: str = field(
        default="",
        metadata={"help": "Resume from a checkpoint folder, a run folder holding checkpoints, or a Hub repo id."},
    )
    sample_num_steps: int = field(default=50, metadata={"help": "Number of sampler steps (DDIM, or the flow SDE)."})
    sample_eta: float = field(
        default=1.0,
        metadata={"help": "Noise level of the stochastic sampler: DDIM eta for Stable Diffusion 1.x/2.x and SDXL, the "
                  "flow SDE's noise level a for SD3 and FLUX (Flow-GRPO uses 0.7); must be > 0 so that every step has "
                  "a log-probability."},
    )
    sample_guidance_scale: float = field(
        default=5.0,
        metadata={"help": "Classifier-free guidance weight. 1.0 trains guidance-free: no unconditional branch in "
                  "sampling or training (half the model evaluations); the trained model is used at any scale."},
    )
    sample_sde_window: str = field(
        default="all",
        metadata={
            "help": "(trl-safediffusion) Which sampler steps are stochastic and trained: 'all' (DDPO, the paper), "
            "'fixed' (the `sample_sde_window_size` steps from `sample_sde_window_start`), 'random' (a window drawn "
            "per epoch, Flow-GRPO-Fast) or 'sliding' (a window that moves one step later every "
            "`sample_sde_window_shift_every` epochs, MixGRPO). Outside the window steps are deterministic (DDIM eta "
            "0, the flow ODE) and neither stored nor trained."
        },
    )
    sample_sde_window_size: int = field(
        default=0, metadata={"help": "(trl-safediffusion) Steps in the stochastic window (with a window mode)."}
    )
    sample_sde_window_start: int = field(
        default=0, metadata={"help": "(trl-safediffusion) First step of the 'fixed' window (0 = the noisiest)."}
    )
    sample_sde_window_shift_every: int = field(
        default=0, metadata={"help": "(trl-safediffusion) Epochs per one-step move of the 'sliding' window."}
    )
    sample_tail_steps: int = field(
        default=0,
        metadata={
            "help": "(trl-safediffusion) With a stochastic window: take the deterministic steps after it as this many "
            "larger steps (DDIM's deterministic jump, the flow ODE's Euler step between evenly spaced steps of the "
            "rest of the schedule) to make the images the reward scores; fewer model evaluations per rollout. 0 "
            "keeps every step."
        },
    )
    sample_batch_size: int = field(default=1, metadata={"help": "Batch size (per process) used for sampling."})
    sample_num_batches_per_epoch: int = field(default=2, metadata={"help": "Number of sampling batches per epoch."})
    train_batch_size: int = field(default=1, metadata={"help": "Batch size (per process) used for training."})
    train_use_8bit_adam: bool = field(default=False, metadata={"help": "Use 8-bit AdamW from bitsandbytes."})
    train_learning_rate: float = field(default=3e-4, metadata={"help": "Learning rate."})
    train_adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    train_adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    train_adam_weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    train_adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    train_gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Number of training minibatches accumulated per optimizer step."}
    )
    train_max_grad_norm: float = field(default=1.0, metadata={"help": "Maximum gradient norm (clipping)."})
    train_num_inner_epochs: int = field(default=1, metadata={"help": "Passes over each epoch's samples."})
    train_cfg: bool = field(default=True, metadata={"help": "Use classifier-free guidance in the training forward pass."})
    train_adv_clip_max: float = field(default=5.0, metadata={"help": "Advantages are clipped to [-max, max]."})
    train_clip_range: float = field(default=1e-4, metadata={"help": "PPO clip range of the probability ratio."})
    train_timestep_fraction: float = field(
        default=1.0, metadata={"help": "Fraction of each trajectory's timesteps trained on (sampled per sample)."}
    )
    train_timestep_window: float = field(
        default=1.0,
        metadata={
            "help": "(trl-safediffusion) Train only on the first (noisiest) this fraction of each trajectory's "
            "trainable steps, rounded up; `train_timestep_fraction` then picks among them. The early steps decide "
            "colour and layout, the late ones draw detail. 1.0 trains on the whole trajectory."
        },
    )
    train_timesteps_per_forward: str = field(  # a str for HfArgumentParser (TRL scripts); ints are accepted too
        default="auto",
        metadata={
            "help": "(trl-safediffusion) Timesteps stacked into one UNet forward/backward (a positive integer or 'auto'). The gradient is the same "
            "for any value; larger is faster and uses more memory. 'auto': the largest stack whose activations fit "
            "`train_memory_budget_gb` (measured on the first training batch)."
        },
    )
    train_memory_budget_gb: float = field(
        default=0.0,
        metadata={
            "help": "(trl-safediffusion) Activation memory (GB) `train_timesteps_per_forward='auto'` may fill; 0: 70% "
            "of the GPU's free memory, or 40% of the host's available memory on CPU."
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "(trl-safediffusion) Recompute UNet activations in the backward pass: less memory, slower."},
    )
    per_prompt_stat_tracking: bool = field(
        default=False, metadata={"help": "Normalise advantages with per-prompt running statistics."}
    )
    per_prompt_stat_tracking_buffer_size: int = field(
        default=16, metadata={"help": "Number of reward values kept per prompt."}
    )
    per_prompt_stat_tracking_min_count: int = field(
        default=16, metadata={"help": "Minimum rewards seen for a prompt before its own statistics are used."}
    )
    async_reward_computation: bool = field(
        default=False, metadata={"help": "Compute rewards in a thread pool while sampling continues."}
    )
    max_workers: int = field(default=2, metadata={"help": "Number of threads for async reward computation."})
    negative_prompts: str = field(
        default="", metadata={"help": "Negative prompt used for the unconditional branch of classifier-free guidance."}
    )
    output_dir: str = field(
        default="",
        metadata={"help": "Folder where `save_model()`/`save_pretrained()` write the final model when called without "
                  "one (default: `<project_dir>/final_model`)."},
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Push the final model to the Hugging Face Hub."})
    hub_model_id: str | None = field(
        default=None, metadata={"help": "(trl-safediffusion) Repo id to push to (defaults to the exp_name)."}
    )
    hub_private_repo: bool | None = field(
        default=None, metadata={"help": "(trl-safediffusion) Create the Hub repo as private."}
    )
    hub_strategy: str = field(
        default="end",
        metadata={
            "help": "(trl-safediffusion) 'end': push the final model; 'every_save': also push the model at every "
            "checkpoint; 'checkpoint': also push the full training state so a run can resume elsewhere."
        },
    )
    push_samples_every: int = field(
        default=0,
        metadata={
            "help": "(trl-safediffusion) Every this many epochs, publish the main process's sampled images with "
            "prompts, labels and rewards as a Hub dataset (0: never)."
        },
    )
    samples_dataset_id: str | None = field(
        default=None, metadata={"help": "(trl-safediffusion) Dataset repo for push_samples_every (default: <hub_model_id>-samples)."}
    )
    hub_token: str | None = field(
        default=None, metadata={"help": "(trl-safediffusion) Hub token (never written to disk or logs)."}
    )

    def __post_init__(self):
        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in (
            "num_epochs",
            "sample_num_steps",
            "sample_batch_size",
            "sample_num_batches_per_epoch",
            "train_batch_size",
            "train_gradient_accumulation_steps",
            "train_num_inner_epochs",
            "max_workers",
            "per_prompt_stat_tracking_buffer_size",
        ):
            positive_int(name)
        tpf = self.train_timesteps_per_forward
        if isinstance(tpf, str) and tpf.strip().isdigit():
            tpf = self.train_timesteps_per_forward = int(tpf)
        elif isinstance(tpf, str) and tpf.strip().lower() == "auto":
            tpf = self.train_timesteps_per_forward = "auto"
        if tpf != "auto" and (isinstance(tpf, bool) or not isinstance(tpf, int) or tpf < 1):
            raise ValueError(f"train_timesteps_per_forward must be a positive integer or 'auto', got {tpf!r}")
        if not self.train_memory_budget_gb >= 0:
            raise ValueError(f"train_memory_budget_gb must be >= 0 (0: a fraction of the free memory), got "
                             f"{self.train_memory_budget_gb!r}")
        if isinstance(self.save_freq, bool) or not isinstance(self.save_freq, int) or self.save_freq < 0:
            raise ValueError(f"save_freq must be an integer >= 0 (0 disables checkpoints), got {self.save_freq!r}")
        if not isinstance(self.num_checkpoint_limit, int) or self.num_checkpoint_limit < 1:
            raise ValueError(f"num_checkpoint_limit must be an integer >= 1, got {self.num_checkpoint_limit!r}")
        if not isinstance(self.per_prompt_stat_tracking_min_count, int) or self.per_prompt_stat_tracking_min_count < 1:
            raise ValueError(
                f"per_prompt_stat_tracking_min_count must be an integer >= 1, got {self.per_prompt_stat_tracking_min_count!r}"
            )
        if self.mixed_precision is None:
            self.mixed_precision = "no"
        if self.mixed_precision not in _MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {_MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.log_with is not None and self.log_with not in _LOG_WITH:
            raise ValueError(f"log_with must be None or one of {_LOG_WITH}, got {self.log_with!r}")
        if not self.sample_eta > 0:
            raise ValueError(
                f"sample_eta must be > 0 (got {self.sample_eta}): with eta = 0 DDIM is deterministic and the policy has "
                "no log-probability; use 1.0 as DDPO and SafeDiffusion-R1 do"
            )
        if self.sample_guidance_scale < 0:
            raise ValueError(f"sample_guidance_scale must be >= 0, got {self.sample_guidance_scale}")
        if not 0.0 < self.train_timestep_fraction <= 1.0:
            raise ValueError(f"train_timestep_fraction must be in (0, 1], got {self.train_timestep_fraction}")
        if not 0.0 < self.train_timestep_window <= 1.0:
            raise ValueError(
                f"train_timestep_window must be in (0, 1] (the fraction of each trajectory, from its first step, that "
                f"is trained on), got {self.train_timestep_window}"
            )
        self._check_sde_window()
        for name in ("train_learning_rate", "train_clip_range", "train_adv_clip_max", "train_max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.train_adam_beta1 < 1.0 or not 0.0 <= self.train_adam_beta2 < 1.0:
            raise ValueError("train_adam_beta1 and train_adam_beta2 must be in [0, 1)")
        if self.train_adam_weight_decay < 0 or self.train_adam_epsilon <= 0:
            raise ValueError("train_adam_weight_decay must be >= 0 and train_adam_epsilon > 0")
        if self.sample_batch_size < self.train_batch_size:
            raise ValueError(
                f"sample_batch_size ({self.sample_batch_size}) must be >= train_batch_size ({self.train_batch_size}); "
                "lower train_batch_size or raise sample_batch_size"
            )
        samples = self.sample_batch_size * self.sample_num_batches_per_epoch
        per_step = self.train_batch_size * self.train_gradient_accumulation_steps
        if samples % per_step != 0:
            raise ValueError(
                f"samples per epoch per process (sample_batch_size * sample_num_batches_per_epoch = {samples}) must be "
                f"a multiple of train_batch_size * train_gradient_accumulation_steps ({per_step}); adjust "
                "train_batch_size or train_gradient_accumulation_steps"
            )
        if isinstance(self.push_samples_every, bool) or not isinstance(self.push_samples_every, int) or self.push_samples_every < 0:
            raise ValueError(f"push_samples_every must be an integer >= 0, got {self.push_samples_every!r}")
        if self.hub_strategy not in ("end", "every_save", "checkpoint"):
            raise ValueError(f"hub_strategy must be 'end', 'every_save' or 'checkpoint', got {self.hub_strategy!r}")
        if self.train_use_8bit_adam:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ImportError("train_use_8bit_adam=True needs bitsandbytes: pip install bitsandbytes")
        for name in ("tracker_kwargs", "accelerator_kwargs", "project_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        if self.log_with is None and self.tracker_kwargs:
            warnings.warn("tracker_kwargs is set but log_with is None: no tracker will receive them", stacklevel=2)

    def _check_sde_window(self):
        modes = ("all", "fixed", "random", "sliding")
        if self.sample_sde_window not in modes:
            raise ValueError(f"sample_sde_window must be one of {modes}, got {self.sample_sde_window!r}")
        if isinstance(self.sample_tail_steps, bool) or not isinstance(self.sample_tail_steps, int) \
                or self.sample_tail_steps < 0:
            raise ValueError(f"sample_tail_steps must be an integer >= 0 (0 keeps every step after the window), got "
                             f"{self.sample_tail_steps!r}")
        if self.sample_sde_window == "all":
            if self.sample_tail_steps:
                raise ValueError(
                    f"sample_tail_steps={self.sample_tail_steps} shortens the deterministic steps after a stochastic "
                    "window, and sample_sde_window='all' has none: set sample_sde_window (e.g. 'fixed') or "
                    "sample_tail_steps=0"
                )
            return
        size, steps = self.sample_sde_window_size, self.sample_num_steps
        if not 1 <= size <= steps:
            raise ValueError(
                f"sample_sde_window_size must be in [1, sample_num_steps={steps}] with sample_sde_window="
                f"{self.sample_sde_window!r}, got {size}"
            )
        if self.sample_sde_window == "fixed" and not 0 <= self.sample_sde_window_start <= steps - size:
            raise ValueError(
                f"sample_sde_window_start must be in [0, sample_num_steps - sample_sde_window_size = {steps - size}] "
                f"(the window must lie inside the {steps}-step schedule), got {self.sample_sde_window_start}"
            )
        if self.sample_sde_window == "sliding" and self.sample_sde_window_shift_every < 1:
            raise ValueError(
                "sample_sde_window='sliding' needs sample_sde_window_shift_every >= 1 (epochs per one-step move of the "
                f"window), got {self.sample_sde_window_shift_every}"
            )
        if self.train_timestep_window != 1.0:
            raise ValueError(
                f"train_timestep_window={self.train_timestep_window} chooses the trained steps of a fully stochastic "
                "rollout; with sample_sde_window the window does: keep train_timestep_window=1.0"
            )

    def to_dict(self) -> dict[str, Any]:
        """All fields as a flat dict, with `hub_token` removed (tokens are never logged or written to disk)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "hub_token":
                continue
            value = getattr(self, f.name)
            if isinstance(value, dict):
                for key, sub in value.items():
                    if "token" in str(key).lower():
                        continue
                    out[f"{f.name}/{key}"] = sub
            else:
                out[f.name] = value
        return out
