"""Publishing a trainer's model: model cards, `save_pretrained`, `push_to_hub`, checkpoints and samples on the Hub.

`DDPOTrainer` takes these methods from [`PublishingMixin`]; a subclass tells its own story through the hooks
`_citations()`, `_recipe()`, `_model_card_info()`, `_tag_names` and `_method_name`. The card, upload and dataset
machinery is in `trl_safediffusion.hub`.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


class PublishingMixin:
    """Cards and Hub publishing for a trainer with `config`, `accelerator`, `sd_pipeline`, `reward_fn`, `prompt_fn`,
    `project_dir`, `first_epoch`, `_card_overrides` and `_hub_pusher`."""

    _tag_names: list[str] = []
    _method_name = ""

    def _citations(self) -> list[str]:
        """Hook: BibTeX entries of this trainer's method, for its model cards and sample datasets."""
        from .hub import DDPO_CITATION

        return [DDPO_CITATION]

    def _recipe(self) -> dict:
        """The training settings a model card reports (`None` values are left out of the card)."""
        c, pipe = self.config, self.sd_pipeline
        return {
            "sample_num_steps": c.sample_num_steps,
            "sample_eta": c.sample_eta,
            "sample_guidance_scale": c.sample_guidance_scale,
            "sample_sde_window": None if c.sample_sde_window == "all" else c.sample_sde_window,
            "sample_sde_window_size": None if c.sample_sde_window == "all" else c.sample_sde_window_size,
            "sample_tail_steps": c.sample_tail_steps or None,
            "train_learning_rate": c.train_learning_rate,
            "train_batch_size": c.train_batch_size,
            "sample_batch_size": c.sample_batch_size,
            "train_clip_range": c.train_clip_range,
            "train_adv_clip_max": c.train_adv_clip_max,
            "train_timestep_window": c.train_timestep_window,
            "train_timestep_fraction": c.train_timestep_fraction,
            "num_epochs": c.num_epochs,
            "epochs_trained": self.first_epoch,
            "mixed_precision": c.mixed_precision,
            "lora": pipe.use_lora,
            "lora_rank": pipe.lora_rank if pipe.use_lora else None,
            "trainable_modules": ", ".join(pipe.trainable_modules or []) or None,
        }

    def _model_card_info(self) -> dict:
        """Hook: what the model card reports: DDPO (arXiv 2305.13301), its citation and `_tag_names`, the recipe, the
        reward and where the prompts came from."""
        prompt_sources = []
        if self.prompt_fn is not None:
            name = getattr(self.prompt_fn, "__name__", None) or type(self.prompt_fn).__name__
            prompt_sources.append(f"drawn by the prompt function `{name}`")
        return {
            "base_model": self.sd_pipeline.pretrained_model_name,
            "trainer": type(self).__name__,
            "method": (
                "fine-tuned with DDPO ([Black et al., 2023](https://arxiv.org/abs/2305.13301)): reinforcement "
                "learning on the denoising steps, a clipped policy-gradient objective that makes sampled trajectories "
                "with a high reward more likely"
            ),
            "citations": self._citations(),
            "prompt_sources": prompt_sources,
            "recipe": self._recipe(),
            "reward": describe_reward(self.reward_fn),
            "tags": list(self._tag_names),
            "pipeline_class": self.sd_pipeline.diffusers_pipeline_class_name,
            "family_tags": list(getattr(self.sd_pipeline, "family_tags", None) or []),
        }

    def save_pretrained(self, save_directory: str | None = None, fuse_lora: bool = False):
        """Save the trained model in diffusers format with a model card (main process only).

        Args:
            save_directory (`str`, *optional*): defaults to `config.output_dir`, else `<project_dir>/final_model`.
            fuse_lora (`bool`, *optional*, defaults to `False`): with LoRA, save the fused full pipeline instead of the
                LoRA weights.
        """
        save_directory = save_directory or self.config.output_dir or os.path.join(self.project_dir, "final_model")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self._write_model_folder(save_directory, fuse_lora=fuse_lora, **self._card_overrides)
        self.accelerator.wait_for_everyone()

    save_model = save_pretrained

    def _write_model_folder(self, folder: str, fuse_lora: bool = False, **card_kwargs):
        from .hub import write_training_model_card

        self.sd_pipeline.save_pretrained(folder, fuse_lora=fuse_lora)
        write_training_model_card(folder, self._model_card_info(), lora=self.sd_pipeline.use_lora and not fuse_lora,
                                  **card_kwargs)

    def push_to_hub(self, repo_id: str | None = None, private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None, revision: str | None = None, fuse_lora: bool = False,
                    dataset_name: str | None = None, **card_kwargs):
        """Save the model locally (under the project folder) and upload it to `repo_id` (main process only).

        `dataset_name` (TRL's keyword) and other `card_kwargs` go into the model card. Raises `HubPushError` naming the
        repo and the cause if the upload fails; the local folder stays complete.
        """
        repo_id = repo_id or self.config.hub_model_id or self.config.exp_name
        local = os.path.join(self.project_dir, "hub_model")
        if dataset_name:
            card_kwargs.setdefault("datasets", [dataset_name])
        self._card_overrides = {**self._card_overrides, **card_kwargs, "repo_id": repo_id}
        self.save_pretrained(local, fuse_lora=fuse_lora)
        url = None
        if self.accelerator.is_main_process:
            from .hub import push_folder_to_hub

            url = push_folder_to_hub(
                local,
                repo_id,
                private=self.config.hub_private_repo if private is None else private,
                token=token or self.config.hub_token,
                commit_message=commit_message or f"{type(self).__name__}: epoch {self.first_epoch}",
                revision=revision,
            )
        self.accelerator.wait_for_everyone()
        return url

    def _samples_label_column(self) -> str | None:
        """Hook: the prompt-metadata key whose value labels each published sample (DDPO: none)."""
        return None

    def _push_samples(self, epoch: int, prompt_image_data, plan):
        """Publish this epoch's samples of the main process as a Hub dataset; a failure warns, training goes on."""
        if not self.accelerator.is_main_process:
            return
        from .hub import HubPushError, epoch_samples_dataset, push_samples_dataset

        dataset = epoch_samples_dataset(prompt_image_data, plan.prompts, plan.metadata,
                                        self._samples_label_column(), epoch=epoch, seed=self.config.seed)
        repo_id = self.config.samples_dataset_id or f"{self.config.hub_model_id or self.config.exp_name}-samples"
        try:
            push_samples_dataset(dataset, repo_id, local_dir=os.path.join(self.project_dir, "samples_dataset"),
                                 token=self.config.hub_token, private=self.config.hub_private_repo,
                                 model_repo_id=self.config.hub_model_id, method=self._method_name,
                                 method_tags=[t for t in self._tag_names if t not in ("trl", "trl-safediffusion")],
                                 citations=self._citations())
        except HubPushError as err:
            logger.warning("%s (samples of epoch %d are kept locally)", err, epoch)

    def _push_final(self):
        self.push_to_hub(self.config.hub_model_id)

    def _push_checkpoint(self, path: str, epoch: int):
        if not self.accelerator.is_main_process:
            return
        from .hub import CheckpointPusher

        if self._hub_pusher is None:
            self._hub_pusher = CheckpointPusher(
                repo_id=self.config.hub_model_id or self.config.exp_name,
                strategy=self.config.hub_strategy,
                token=self.config.hub_token,
                private=self.config.hub_private_repo,
                is_main_process=True,
                checkpoint_limit=self.config.num_checkpoint_limit,
            )
        model_dir = os.path.join(self.project_dir, "hub_model")
        self._write_model_folder(model_dir, **{**self._card_overrides, "repo_id": self._hub_pusher.repo_id})
        self._hub_pusher.on_save(model_dir, checkpoint_dir=path if self.config.hub_strategy == "checkpoint" else None,
                                 epoch=epoch)


def describe_reward(reward_fn) -> dict:
    """A JSON-able description of a reward callable for cards and logs (its `describe()` if it has one)."""
    describe = getattr(reward_fn, "describe", None)
    if callable(describe):
        return describe()
    return {"name": getattr(reward_fn, "name", None) or getattr(reward_fn, "__name__", type(reward_fn).__name__)}
