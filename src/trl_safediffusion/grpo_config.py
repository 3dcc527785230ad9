"""`SafeDDPOGRPOConfig`: DDPOConfig plus group-relative advantages, with SafeDiffusion-R1's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from .ddpo_config import DDPOConfig


@dataclass
class SafeDDPOGRPOConfig(DDPOConfig):
    r"""
    Configuration of [`SafeDDPOGRPOTrainer`] (SafeDiffusion-R1, arXiv 2605.18719).

    Defaults follow the paper's reference recipe where it differs from DDPO: 4 prompts x 16 images per process per
    epoch (group size 16, sample batch 4 x 16 batches) with one shared initial noise per group, advantages divided by
    the unbiased group std and clipped to +-2.5, AdamW lr 1e-5, every timestep but the last trained, beta = 0.
    Batch sizes are per process; `sample_batch_size * sample_num_batches_per_epoch` must be a multiple of
    `num_generations` so that every prompt group is sampled complete on one process.
    """

    sample_batch_size: int = field(default=4, metadata={"help": "Batch size (per process) used for sampling."})
    sample_num_batches_per_epoch: int = field(
        default=16,
        metadata={"help": "Number of sampling batches per epoch (the default 4 x 16 = 64 samples per process are 4 "
                  "prompts x 16 images, as the reference code samples)."},
    )
    train_batch_size: int = field(default=4, metadata={"help": "Batch size (per process) used for training."})
    train_learning_rate: float = field(default=1e-5, metadata={"help": "Learning rate."})
    train_adv_clip_max: float = field(default=2.5, metadata={"help": "Advantages are clipped to [-max, max]."})
    mixed_precision: str = field(
        default="bf16",
        metadata={"help": "Mixed precision: 'no', 'fp16' or 'bf16'. Frozen weights are cast; trainable weights stay fp32."},
    )
    num_epochs: int = field(default=300, metadata={"help": "Number of epochs to train."})
    save_freq: int = field(default=20, metadata={"help": "Number of epochs between checkpoints (0 disables them)."})
    num_generations: int = field(
        default=16, metadata={"help": "Group size G: images sampled per prompt; advantages are relative to the group."}
    )
    share_initial_noise: bool = field(
        default=True, metadata={"help": "Start every sample of a group from the same initial noise (the paper does)."}
    )
    scale_rewards: str = field(
        default="group",
        metadata={
            "help": "Advantage scaling: 'group' (r - mean_g) / (std_g + eps), 'batch' divides by the std over the "
            "whole batch, 'none' only subtracts the group mean."
        },
    )
    advantage_std: str = field(
        default="unbiased",
        metadata={
            "help": "Std that scales the advantages: 'unbiased' (divides by n - 1: torch's default, as TRL's "
            "GRPOTrainer and the SafeDiffusion-R1 reference code) or 'population' (divides by n)."
        },
    )
    advantage_epsilon: float = field(default=1e-8, metadata={"help": "eps added to the std in the advantage."})
    beta: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the KL to the reference policy (the base UNet: LoRA disabled, or a frozen copy under "
            "full fine-tuning). 0 as in the paper."
        },
    )
    kl_mode: str = field(
        default="guided",
        metadata={
            "help": "What the KL (beta > 0) compares: 'guided' the classifier-free-guided step at the training guidance "
            "scale; 'branches' the unconditional and the conditional predictions separately, which holds the model at "
            "every guidance scale, not only the training one (the same as 'guided' without CFG)."
        },
    )
    kl_unsafe_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the KL on samples whose `label_column` is true (unsafe prompts); 1 treats every prompt "
            "alike, 0 anchors only the benign prompts (and, with kl_mode='branches', the unconditional prediction, "
            "which sees no prompt) so unsafe prompts move freely."
        },
    )
    structure_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the structure anchor on samples whose `label_column` is true (unsafe prompts): the mean "
            "squared gap between `structure_fn` of the policy's and of the reference's predicted clean latents (x0_hat "
            "of the guided step), so that an unsafe prompt may change what it draws but not where or how much. Needs "
            "`structure_fn` passed to the trainer; 0 turns it off (the paper has no such term)."
        },
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "Weights of the reward functions when several are given (default all 1)."}
    )
    train_skip_last_timestep: bool = field(
        default=True,
        metadata={"help": "Never train on the final denoising step (its tiny variance makes log-probs unstable)."},
    )
    label_column: str = field(
        default="unsafe",
        metadata={"help": "Dataset column whose values split the reward logs (e.g. unsafe true/false)."},
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Dataset column holding the prompt text."})

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.num_generations, bool) or not isinstance(self.num_generations, int) or self.num_generations < 2:
            raise ValueError(
                f"num_generations must be an integer >= 2 (group-relative advantages need a group), got "
                f"{self.num_generations!r}"
            )
        per_process = self.sample_batch_size * self.sample_num_batches_per_epoch
        if per_process % self.num_generations != 0:
            raise ValueError(
                f"sample_batch_size * sample_num_batches_per_epoch ({self.sample_batch_size} * "
                f"{self.sample_num_batches_per_epoch} = {per_process}) must be a multiple of num_generations "
                f"({self.num_generations}); lower num_generations or raise sample_batch_size / "
                "sample_num_batches_per_epoch"
            )
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {self.scale_rewards!r}")
        if self.advantage_std not in ("unbiased", "population"):
            raise ValueError(f"advantage_std must be 'unbiased' or 'population', got {self.advantage_std!r}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.kl_mode not in ("guided", "branches"):
            raise ValueError(f"kl_mode must be 'guided' or 'branches', got {self.kl_mode!r}")
        if isinstance(self.kl_unsafe_weight, bool) or not 0.0 <= float(self.kl_unsafe_weight) <= 1.0:
            raise ValueError(f"kl_unsafe_weight must be a number in [0, 1], got {self.kl_unsafe_weight!r}")
        if isinstance(self.structure_weight, bool) or not float(self.structure_weight) >= 0.0:
            raise ValueError(f"structure_weight must be a number >= 0, got {self.structure_weight!r}")
        if not self.advantage_epsilon > 0:
            raise ValueError(f"advantage_epsilon must be > 0, got {self.advantage_epsilon}")
        if self.reward_weights is not None:
            if not isinstance(self.reward_weights, (list, tuple)) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in self.reward_weights
            ):
                raise ValueError(f"reward_weights must be a list of numbers, got {self.reward_weights!r}")
            self.reward_weights = [float(w) for w in self.reward_weights]
        if self.train_skip_last_timestep and self.sample_num_steps < 2:
            raise ValueError("sample_num_steps must be >= 2 when train_skip_last_timestep is True")
        if self.per_prompt_stat_tracking:
            raise ValueError(
                "per_prompt_stat_tracking is DDPO's normalisation; SafeDDPOGRPOTrainer normalises within each group "
                "(scale_rewards). Set per_prompt_stat_tracking=False"
            )
