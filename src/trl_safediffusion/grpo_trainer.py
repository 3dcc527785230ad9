"""`SafeDDPOGRPOTrainer`: online GRPO for Stable Diffusion (SafeDiffusion-R1, arXiv 2605.18719).

What SafeDiffusion-R1 adds to DDPO lives here, in the hooks of `DDPOTrainer`: prompts from a dataset (or a prompt
function) in groups of G, all samples of a group sharing their initial noise; the advantage of a sample is its reward
relative to its own group (GRPO, arXiv 2402.03300), a zero-variance group contributing nothing; the reference policy
(adapters off, or a frozen copy) with the KL to it (guided or per guidance branch) and its per-label weights; the
structure anchor; rewards logged by prompt label; its card.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch

from .advantages import group_advantages
from .ddpo_trainer import DDPOTrainer
from .grpo_config import SafeDDPOGRPOConfig
from .losses import feature_anchor_loss, same_std_gaussian_kl
from .pipelines.base import DDPOStableDiffusionPipeline, StepDistribution
from .reward_stats import label_split_log
from .sample_plan import DATASET_ORDER, GROUP_NOISE, GROUP_STEP_NOISE, SamplePlan, mix_seed

__all__ = ["SafeDDPOGRPOTrainer", "group_advantages"]


class SafeDDPOGRPOTrainer(DDPOTrainer):
    r"""
    Online GRPO post-training of a Stable Diffusion UNet (SafeDiffusion-R1).

    Args:
        config (`SafeDDPOGRPOConfig`): training configuration.
        reward_function (`Callable` or list of `Callable`): reward(s) with the contract
            `(images, prompts, prompt_metadata) -> (rewards, reward_metadata)`; a list is combined with
            `config.reward_weights` and each component is logged.
        sd_pipeline (`DDPOStableDiffusionPipeline`): the pipeline to train.
        train_dataset (`datasets.Dataset`, *optional*): prompts in `config.prompt_column`; the other columns reach the
            reward as `prompt_metadata` (one dict per sample). Give this or `prompt_function`.
        prompt_function (`Callable`, *optional*): `() -> (prompt, prompt_metadata)`, called once per group.
        image_samples_hook (`Callable`, *optional*): as in `DDPOTrainer`.
        structure_fn (`Callable`, *optional*): the structure anchor's feature map, `(n, C, h, w)` predicted clean
            latents -> `(n, ...)` features, differentiable; used with `config.structure_weight > 0`. Features that
            keep the layout and drop the unsafe attribute let an unsafe prompt change what it draws but not where, e.g.
            [`~trl_safediffusion.toy.ObjectMap`] for the toy world's colours.
    """

    _tag_names = ["trl", "trl-safediffusion", "safediffusion-r1", "grpo", "safety"]
    _method_name = "SafeDiffusion-R1"
    _requires_prompt_function = False  # a train_dataset instead is the GRPO way

    def __init__(
        self,
        config: SafeDDPOGRPOConfig,
        reward_function: Callable | list[Callable],
        sd_pipeline: DDPOStableDiffusionPipeline,
        train_dataset=None,
        prompt_function: Callable | None = None,
        image_samples_hook: Callable | None = None,
        structure_fn: Callable | None = None,
    ):
        if not isinstance(config, SafeDDPOGRPOConfig):
            raise ValueError(f"config must be a SafeDDPOGRPOConfig, got {type(config).__name__}")
        if structure_fn is not None and not callable(structure_fn):
            raise ValueError(f"structure_fn must be callable (latents -> features), got {type(structure_fn).__name__}")
        if config.structure_weight > 0 and structure_fn is None:
            raise ValueError(
                f"config.structure_weight={config.structure_weight} needs structure_fn (latents -> features) passed to "
                "the trainer; pass one or set structure_weight=0"
            )
        if structure_fn is not None and config.structure_weight == 0:
            raise ValueError("structure_fn is given but config.structure_weight is 0: set structure_weight > 0 to use it")
        if (train_dataset is None) == (prompt_function is None):
            raise ValueError("pass exactly one of train_dataset (a datasets.Dataset with a prompt column) or prompt_function")
        if prompt_function is not None and not callable(prompt_function):
            raise ValueError("prompt_function must be a callable returning (prompt, prompt_metadata)")
        if train_dataset is not None:
            self._check_dataset(train_dataset, config)
        self.train_dataset = train_dataset
        self.structure_fn = structure_fn
        self.ref_unet = None  # the frozen reference of a full fine-tune (LoRA: the adapters switched off)
        reward_function = self._combine_rewards(reward_function, config.reward_weights)
        super().__init__(config, reward_function, prompt_function, sd_pipeline, image_samples_hook)
        if train_dataset is not None:
            self._check_enough_prompts()

    @staticmethod
    def _check_dataset(dataset, config):
        columns = getattr(dataset, "column_names", None)
        if columns is None or not hasattr(dataset, "__getitem__"):
            raise ValueError(f"train_dataset must be a datasets.Dataset, got {type(dataset).__name__}")
        if config.prompt_column not in columns:
            raise ValueError(
                f"train_dataset has no {config.prompt_column!r} column (columns: {columns}); rename the prompt column "
                "or set config.prompt_column"
            )
        if len(dataset) == 0:
            raise ValueError("train_dataset is empty")

    @staticmethod
    def _combine_rewards(reward_function, weights):
        if isinstance(reward_function, (list, tuple)):
            if not reward_function:
                raise ValueError("reward_function is an empty list; pass at least one reward callable")
            for i, fn in enumerate(reward_function):
                if not callable(fn):
                    raise ValueError(f"reward_function[{i}] is not callable ({type(fn).__name__})")
            if weights is not None and len(weights) != len(reward_function):
                raise ValueError(
                    f"reward_weights has {len(weights)} entries for {len(reward_function)} reward functions"
                )
            from .rewards.combine import CombinedReward

            return CombinedReward(list(reward_function), weights=weights)
        if weights is not None and len(weights) != 1:
            raise ValueError(f"reward_weights has {len(weights)} entries for one reward function")
        if weights is not None and weights[0] != 1.0:
            from .rewards.combine import CombinedReward

            return CombinedReward([reward_function], weights=weights)
        return reward_function

    # ------------------------------------------------------------------ sampling plan
    def _trainable_timestep_count(self) -> int:
        skip = 1 if self.config.train_skip_last_timestep else 0
        return min(self._log_prob_steps, self.config.sample_num_steps - skip)

    def _groups_per_process(self) -> int:
        c = self.config
        return c.sample_batch_size * c.sample_num_batches_per_epoch // c.num_generations

    def _check_enough_prompts(self):
        """An epoch samples `num_processes * groups per process` distinct prompts: checked before the first epoch."""
        n_groups = self._groups_per_process() * self.accelerator.num_processes
        n_rows = len(self.train_dataset)
        if n_groups > n_rows:
            raise ValueError(
                f"train_dataset has {n_rows} prompts but an epoch needs {n_groups} distinct prompts "
                "(num_processes * sample_batch_size * sample_num_batches_per_epoch / num_generations); add prompts or "
                "lower the batch sizes"
            )

    def _epoch_group_rows(self, epoch: int) -> list[int]:
        """Dataset rows of this epoch's groups, for all processes in order (the same list on every process)."""
        from trl.trainer.utils import RepeatSampler

        n_groups = self._groups_per_process() * self.accelerator.num_processes  # enough prompts: checked at init
        n_rows = len(self.train_dataset)
        per_pass = n_rows // n_groups
        pass_idx, batch_idx = divmod(epoch, per_pass)
        # TRL's RepeatSampler gives a seeded shuffle of whole prompts; one pass of it is `per_pass` epochs.
        sampler = RepeatSampler(
            self.train_dataset, mini_repeat_count=1, batch_size=n_groups, shuffle=True,
            seed=mix_seed(self.config.seed, DATASET_ORDER, pass_idx) % (2**31),
        )
        order = list(sampler)
        return order[batch_idx * n_groups : (batch_idx + 1) * n_groups]

    def _sample_plan(self, epoch: int) -> SamplePlan:
        c = self.config
        G = c.num_generations
        k = self._groups_per_process()
        rank = self.accelerator.process_index
        prompts, metadata, noise_seeds, step_seeds = [], [], [], []
        if self.train_dataset is not None:
            rows = self._epoch_group_rows(epoch)[rank * k : (rank + 1) * k]
        else:
            rows = [None] * k
        for j, row in enumerate(rows):
            global_group = rank * k + j
            if row is None:
                prompt, meta = self.prompt_fn()
                if not isinstance(prompt, str):
                    raise ValueError(f"prompt_function must return (str, metadata), got a {type(prompt).__name__}")
            else:
                record = self.train_dataset[int(row)]
                prompt = record[c.prompt_column]
                if not isinstance(prompt, str):
                    raise ValueError(f"train_dataset[{row}][{c.prompt_column!r}] is not a string: {prompt!r}")
                meta = {key: v for key, v in record.items() if key != c.prompt_column}
                meta["dataset_index"] = int(row)
            for i in range(G):
                sample_id = global_group * G + i
                noise_id = global_group if c.share_initial_noise else (1 << 40) + sample_id
                prompts.append(prompt)
                metadata.append(meta)
                noise_seeds.append(mix_seed(c.seed, GROUP_NOISE, epoch, noise_id))
                step_seeds.append(mix_seed(c.seed, GROUP_STEP_NOISE, epoch, sample_id))
        return SamplePlan(prompts, metadata, noise_seeds, step_seeds)

    # ------------------------------------------------------------------ the reference policy
    def _setup_extra_models(self):
        """A frozen copy of the pretrained model for the KL and the anchor of a full fine-tune (with LoRA the reference
        is the model with its adapters off). Built before a checkpoint is resumed: it holds the pretrained weights."""
        c, pipe = self.config, self.sd_pipeline
        if (c.beta > 0 or c.structure_weight > 0) and not pipe.use_lora:
            self.ref_unet = copy.deepcopy(pipe.model).requires_grad_(False).to(self.accelerator.device,
                                                                             dtype=self.inference_dtype)
            self.ref_unet.eval()

    def _reference_model(self):
        """`(model, context)`: the reference policy's model and the context that makes it so."""
        if self.ref_unet is not None:
            return self.ref_unet, contextlib.nullcontext()
        model = self.accelerator.unwrap_model(self.model)
        return model, self.sd_pipeline.adapters_disabled(model)

    def _reference_step(self, batch: dict, branches: bool = False) -> StepDistribution:
        """The reference policy's step distribution at the batch's states (no gradient)."""
        with torch.no_grad():
            model, ctx = self._reference_model()
            with ctx:
                return self._step(model, batch, branches=branches)

    # ------------------------------------------------------------------ per-sample weights
    def _sample_weights(self, metadata) -> dict[str, torch.Tensor]:
        weights = {}
        kl = self._kl_weights(metadata)
        if kl is not None:
            weights["kl"] = kl
        structure = self._structure_weights(metadata)
        if structure is not None:
            weights["structure"] = structure
        return weights

    def _kl_weights(self, metadata) -> torch.Tensor | None:
        """(N,) KL weight per local sample: `kl_unsafe_weight` where the label column is true, else 1 (None: all 1)."""
        c = self.config
        if c.beta <= 0 or c.kl_unsafe_weight == 1.0:
            return None
        weight = float(c.kl_unsafe_weight)
        return self._label_weights(metadata, weight, 1.0, f"kl_unsafe_weight={weight}", "kl_unsafe_weight=1")

    def _structure_weights(self, metadata) -> torch.Tensor | None:
        """(N,) structure-anchor weight per local sample: `structure_weight` where the label column is true, else 0
        (None: no anchor)."""
        weight = float(self.config.structure_weight)
        if weight <= 0:
            return None
        return self._label_weights(metadata, weight, 0.0, f"structure_weight={weight}", "structure_weight=0")

    def _label_weights(self, metadata, unsafe_value, safe_value, option, off) -> torch.Tensor:
        label = self.config.label_column
        if not label or not all(isinstance(m, dict) and label in m for m in metadata):
            raise ValueError(
                f"{option} needs every prompt's metadata to carry label_column {label!r} (mix_prompts adds it); set "
                f"label_column to your dataset's unsafe column or {off}"
            )
        values = [unsafe_value if _truthy(m[label]) else safe_value for m in metadata]
        return torch.tensor(values, dtype=torch.float32, device=self.accelerator.device)

    # ------------------------------------------------------------------ loss terms
    def _policy_branches(self) -> bool:
        # kl_mode="branches" anchors each guidance branch, so the policy's step carries them
        return self.config.beta > 0 and self.config.kl_mode == "branches" and self._train_with_cfg

    def compute_loss_terms(self, latents, timesteps, next_latents, log_probs, advantages, conditioning,
                           kl_weights=None, structure_weights=None, sample_weights=None) -> dict[str, torch.Tensor]:
        """[`DDPOTrainer.compute_loss_terms`] with SafeDiffusion-R1's terms.

        Args:
            kl_weights (`torch.Tensor`, *optional*): (N,) weight of each step's KL term (`kl_unsafe_weight` on
                unsafe-labelled samples, 1 elsewhere); all ones when omitted.
            structure_weights (`torch.Tensor`, *optional*): (N,) weight of each step's structure anchor
                (`structure_weight` on unsafe-labelled samples, 0 elsewhere); omitted, there is no anchor.

        Returns:
            `dict` with `loss`, `approx_kl`, `clipfrac`, `kl` (the weighted mean KL to the reference policy, 0 when
            beta = 0) and, with structure weights, `structure` (the weighted mean anchor); `loss` includes
            `beta * kl + structure`.
        """
        weights = dict(sample_weights or {})
        if kl_weights is not None:
            weights["kl"] = kl_weights
        if structure_weights is not None:
            weights["structure"] = structure_weights
        return super().compute_loss_terms(latents, timesteps, next_latents, log_probs, advantages, conditioning,
                                          sample_weights=weights)

    def _extra_loss_terms(self, batch: dict, policy: StepDistribution) -> dict[str, tuple[torch.Tensor, float]]:
        c = self.config
        advantages = batch["advantages"]
        terms = {"kl": (torch.zeros((), device=policy.log_probs.device), 0.0)}
        ref = None  # the reference policy's step, computed once for whichever term needs it
        if c.beta > 0:
            weights = batch["weights"].get("kl")
            w = torch.ones_like(advantages) if weights is None else weights.to(advantages)
            branches = self._policy_branches()
            ref = self._reference_step(batch, branches=branches)
            if branches:
                (uncond, cond), (ref_uncond, ref_cond) = policy.branches, ref.branches
                # the unconditional prediction sees no prompt: anchored for every sample
                per = w * same_std_gaussian_kl(cond.mean, ref_cond.mean, cond.std)
                per = per + same_std_gaussian_kl(uncond.mean, ref_uncond.mean, uncond.std)
            else:
                per = w * same_std_gaussian_kl(policy.mean, ref.mean, policy.std)
            terms["kl"] = (per.mean(), c.beta)
        weights = batch["weights"].get("structure")
        if weights is not None:
            terms["structure"] = (self._structure_anchor(batch, policy, ref, weights.to(advantages)), 1.0)
        return terms

    def _structure_anchor(self, batch, policy: StepDistribution, ref, weights: torch.Tensor) -> torch.Tensor:
        """The structure anchor: `structure_fn` features of the policy's predicted x0 against the reference's, on the
        rows with a positive weight; a mean over all N rows, as the KL."""
        rows = weights > 0
        if not bool(rows.any()):
            return torch.zeros((), device=weights.device)
        if ref is None:
            ref = self._reference_step(batch)
        with torch.no_grad():
            target = self.structure_fn(ref.pred_original_sample[rows]).float()
        features = self.structure_fn(policy.pred_original_sample[rows]).float()
        if features.shape != target.shape or features.shape[0] != int(rows.sum()):
            raise ValueError(
                f"structure_fn must map (n, C, h, w) latents to features with n rows, got {tuple(features.shape)} for "
                f"{int(rows.sum())} latents"
            )
        return feature_anchor_loss(features, target, weights[rows], weights.numel())

    # ------------------------------------------------------------------ advantages and logs
    def _compute_advantages(self, rewards, prompts, metadata=None):
        c = self.config
        adv, stats = group_advantages(rewards, c.num_generations, c.scale_rewards, c.advantage_epsilon, c.advantage_std)
        self._group_stats = stats
        return adv

    def _reward_log(self, epoch, rewards, components, metadata) -> dict:
        log = super()._reward_log(epoch, rewards, components, metadata)
        log["frac_reward_zero_std"] = self._group_stats["zero_std_fraction"]
        log.update(label_split_log(rewards, components, metadata, self.config.label_column))
        return log

    def _samples_label_column(self) -> str | None:
        return self.config.label_column

    def _citations(self) -> list[str]:
        from .hub import DDPO_CITATION, GRPO_CITATION, SAFEDIFFUSION_R1_CITATION

        return [SAFEDIFFUSION_R1_CITATION, DDPO_CITATION, GRPO_CITATION]

    def _recipe(self) -> dict:
        c = self.config
        recipe = {}
        for key, value in super()._recipe().items():
            recipe[key] = value
            if key == "epochs_trained":  # where cards have always shown the group size and the KL weight
                recipe.update(num_generations=c.num_generations, beta=c.beta)
        recipe.update(
            {
                "share_initial_noise": c.share_initial_noise,
                "scale_rewards": c.scale_rewards,
                "advantage_std": c.advantage_std,
                "train_skip_last_timestep": c.train_skip_last_timestep,
                "kl_mode": c.kl_mode if c.beta else None,
                "kl_unsafe_weight": c.kl_unsafe_weight if c.beta else None,
                "structure_weight": c.structure_weight or None,
            }
        )
        return recipe

    def _model_card_info(self) -> dict:
        """The DDPO card information with this trainer's story: SafeDiffusion-R1 online GRPO (arXiv 2605.18719), the
        steering sentence when the reward is the CLIP steering reward, the GRPO recipe and the training prompts'
        sources (Hub ids with their namespace, local files by name)."""
        from .hub import _is_steering_reward, training_data_sources

        info = super()._model_card_info()
        c = self.config
        steering = _is_steering_reward(info["reward"])
        method = "post-trained with online GRPO ([SafeDiffusion-R1](https://arxiv.org/abs/2605.18719))"
        method += " against a CLIP steering reward" if steering else ""
        method += (
            f": the advantage of each image is its reward relative to the {c.num_generations} images sampled for the "
            "same prompt"
        )
        if steering:
            method += (
                ". Unsafe prompts are steered toward a safe version of the same content while safe prompts keep "
                "ordinary prompt alignment; no safety classifier and no paired data are used"
            )
        info["method"] = method
        if self.train_dataset is not None:
            info["dataset_size"] = len(self.train_dataset)
            hub_ids, local = training_data_sources(self.train_dataset)
            info["datasets"] = hub_ids
            info["prompt_sources"] = [f"`{name}` (local, not on the Hub)" for name in local]
            if not hub_ids and not local:
                info["prompt_sources"] = [f"an in-memory `datasets.Dataset` of {len(self.train_dataset)} prompts"]
        return info




def _truthy(value) -> bool:
    """A label value as a bool: True/1/"true"/"yes"/"unsafe" (any case) are true."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "unsafe")
    return bool(value)
