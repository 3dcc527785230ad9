"""Hugging Face Hub publishing: model cards, pipeline / LoRA folders, training-time pushes, checkpoint download,
and datasets of prompts, samples and evaluation results.

Every function here writes its files locally first and uploads the folder afterwards, so a failed upload never loses
work: the folder stays complete and the failure is raised as one [`HubPushError`] naming the repo and the cause (or,
during training, logged by [`CheckpointPusher`] and retried at the next save). Tokens are never logged, never written
into cards or configs, and never part of an error message.

- `hub.errors`: [`HubPushError`], [`HubDownloadError`], token redaction;
- `hub.cards`: [`SafeDiffusionCardInfo`], [`build_model_card`], [`write_training_model_card`], tags and citations;
- `hub.upload`: [`save_pipeline_for_hub`], [`push_folder_to_hub`], [`CheckpointPusher`], [`download_checkpoint`];
- `hub.datasets`: [`samples_to_dataset`], [`push_samples_dataset`], [`push_prompt_dataset`], [`push_eval_results`].

[`download_checkpoint`] fetches the latest complete `checkpoints/checkpoint_<epoch>` pushed with
`hub_strategy="checkpoint"`, so that `resume_from` accepts a repo id.
"""

from __future__ import annotations

from ._card_sections import _is_steering_reward  # noqa: F401  (SafeDDPOGRPOTrainer reads it from here)
from .cards import (
    DDPO_CITATION,
    FRAMEWORK_DISTRIBUTIONS,
    GRPO_CITATION,
    KNOWN_EVAL_DATASETS,
    LIBRARY_TAGS,
    LORA_WEIGHT_NAME,
    MODEL_CARD_SECTIONS,
    RECIPE_LABELS,
    SAFEDIFFUSION_R1_CITATION,
    SAFEDIFFUSION_R1_TAGS,
    SafeDiffusionCardInfo,
    base_model_license,
    build_model_card,
    framework_versions,
    is_hub_id,
    training_data_sources,
    write_model_card,
    write_training_model_card,
)
from .datasets import (
    epoch_samples_dataset,
    eval_results_to_rows,
    push_eval_results,
    push_prompt_dataset,
    push_samples_dataset,
    samples_to_dataset,
)
from .errors import REDACTED, HubDownloadError, HubPushError, redact, scrub_tokens
from .upload import (
    CHECKPOINT_PREFIX,
    CHECKPOINTS_DIR_IN_REPO,
    HUB_STRATEGIES,
    TRAINER_STATE_NAME,
    CheckpointPusher,
    checkpoint_path_in_repo,
    download_checkpoint,
    is_local_or_repo_id,
    push_folder_to_hub,
    save_pipeline_for_hub,
)

__all__ = [
    "CHECKPOINTS_DIR_IN_REPO",
    "CHECKPOINT_PREFIX",
    "DDPO_CITATION",
    "FRAMEWORK_DISTRIBUTIONS",
    "GRPO_CITATION",
    "HUB_STRATEGIES",
    "KNOWN_EVAL_DATASETS",
    "LIBRARY_TAGS",
    "LORA_WEIGHT_NAME",
    "MODEL_CARD_SECTIONS",
    "RECIPE_LABELS",
    "REDACTED",
    "SAFEDIFFUSION_R1_CITATION",
    "SAFEDIFFUSION_R1_TAGS",
    "TRAINER_STATE_NAME",
    "CheckpointPusher",
    "HubDownloadError",
    "HubPushError",
    "SafeDiffusionCardInfo",
    "base_model_license",
    "build_model_card",
    "checkpoint_path_in_repo",
    "download_checkpoint",
    "eval_results_to_rows",
    "framework_versions",
    "is_hub_id",
    "is_local_or_repo_id",
    "push_eval_results",
    "push_folder_to_hub",
    "push_prompt_dataset",
    "push_samples_dataset",
    "redact",
    "epoch_samples_dataset",
    "samples_to_dataset",
    "save_pipeline_for_hub",
    "scrub_tokens",
    "training_data_sources",
    "write_model_card",
    "write_training_model_card",
]
