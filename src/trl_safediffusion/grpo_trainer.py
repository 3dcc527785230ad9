"""`SafeDDPOGRPOTrainer`: online GRPO for Stable Diffusion (SafeDiffusion-R1, arXiv 2605.18719).

Differences from DDPO: prompts come from a dataset (or a prompt function) in groups of G; all samples of a group
share their initial noise; the advantage of a sample is its reward relative to its own group (GRPO, arXiv
2402.03300), a zero-variance group contributing nothing; an optional KL term to the reference policy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .ddpo_trainer import DDPOTrainer, _mix_seed, _SamplePlan
from .grpo_config import SafeDDPOGRPOConfig
from .pipelines.stable_diffusion import DDPOStableDiffusionPipeline


def group_advantages(
    rewards: np.ndarray, group_size: int, scale: str = "group", eps: float = 1e-8, std: str = "unbiased"
) -> tuple[np.ndarray, dict]:
    """Group-relative advantages for rewards laid out group after group.

    Non-finite rewards get advantage 0 and are left out of their group's statistics; a group whose finite rewards
    have (numerically) zero variance, or fewer than two finite rewards, gets advantage 0.

    Args:
        rewards (`np.ndarray`): (num_groups * group_size,) rewards, group after group.
        group_size (`int`): G.
        scale (`str`, *optional*, defaults to `"group"`): `"group"` (r - mean_g) / (std_g + eps), `"batch"` divides by
            the std of the whole batch, `"none"` only subtracts the group mean.
        eps (`float`, *optional*, defaults to `1e-8`): added to the std.
        std (`str`, *optional*, defaults to `"unbiased"`): `"unbiased"` divides the sum of squares by n - 1 (torch's
            default std, as TRL's `GRPOTrainer` and the SafeDiffusion-R1 reference code), `"population"` by n.

    Returns:
        `(advantages, stats)` with `stats` holding `zero_std_fraction` and `nonfinite`.
    """
    if std not in ("unbiased", "population"):
        raise ValueError(f"std must be 'unbiased' or 'population', got {std!r}")
    ddof = 1 if std == "unbiased" else 0
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 1 or rewards.size % group_size:
        raise ValueError(f"rewards ({rewards.shape}) must be 1-D with a length that is a multiple of {group_size}")
    r = rewards.reshape(-1, group_size)  # (num_groups, G)
    finite = np.isfinite(r)
    count = finite.sum(axis=1, keepdims=True)
    safe = np.where(finite, r, 0.0)
    mean = safe.sum(axis=1, keepdims=True) / np.maximum(count, 1)
    var = (np.where(finite, (r - mean) ** 2, 0.0)).sum(axis=1, keepdims=True) / np.maximum(count - ddof, 1)
    group_std = np.sqrt(var)  # (num_groups, 1)
    scale_floor = 1e-12 * np.maximum(1.0, np.abs(mean))
    degenerate = (count < 2) | (group_std <= scale_floor)  # (num_groups, 1)
    centred = np.where(finite, r - mean, 0.0)
    if scale == "group":
        adv = centred / (group_std + eps)
    elif scale == "batch":
        all_finite = rewards[np.isfinite(rewards)]
        batch_std = all_finite.std(ddof=ddof) if all_finite.size > ddof else 0.0
        adv = centred / (batch_std + eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    adv = np.where(degenerate | ~finite, 0.0, adv)
    stats = {"zero_std_fraction": float(degenerate.mean()), "nonfinite": int((~finite).sum())}
    return adv.reshape(-1), stats


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
        self.structure_fn = structure_fn
        if (train_dataset is None) == (prompt_function is None):
            raise ValueError("pass exactly one of train_dataset (a datasets.Dataset with a prompt column) or prompt_function")
        if prompt_function is not None and not callable(prompt_function):
            raise ValueError("prompt_function must be a callable returning (prompt, prompt_metadata)")
        if train_dataset is not None:
            self._check_dataset(train_dataset, config)
        self.train_dataset = train_dataset
        self.prompt_fn = prompt_function
        reward_function = self._combine_rewards(reward_function, config.reward_weights)
        self._setup(config, reward_function, sd_pipeline, image_samples_hook)
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
            seed=_mix_seed(self.config.seed, 4, pass_idx) % (2**31),
        )
        order = list(sampler)
        return order[batch_idx * n_groups : (batch_idx + 1) * n_groups]

    def _sample_plan(self, epoch: int) -> _SamplePlan:
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
                noise_seeds.append(_mix_seed(c.seed, 5, epoch, noise_id))
                step_seeds.append(_mix_seed(c.seed, 6, epoch, sample_id))
        return _SamplePlan(prompts, metadata, noise_seeds, step_seeds)

    # ------------------------------------------------------------------ advantages and logs
    def _compute_advantages(self, rewards, prompts, metadata=None):
        c = self.config
        adv, stats = group_advantages(rewards, c.num_generations, c.scale_rewards, c.advantage_epsilon, c.advantage_std)
        self._group_stats = stats
        return adv

    def _log_rewards(self, epoch, global_step, rewards, prompts, metadata, reward_results, advantages):
        log, components = self._reward_log(epoch, rewards, reward_results)
        log["frac_reward_zero_std"] = self._group_stats["zero_std_fraction"]
        label = self.config.label_column
        if metadata and isinstance(metadata[0], dict) and label in metadata[0]:
            labels = np.asarray([str(m.get(label)).lower() for m in metadata])
            series = {"": rewards, **{f"{name}/": values for name, values in components.items()}}
            for value in sorted(set(labels.tolist())):
                for prefix, values in series.items():
                    mask = (labels == value) & np.isfinite(values)
                    if mask.any():
                        log[f"reward/{prefix}{label}={value}/mean"] = float(values[mask].mean())
                        if not prefix:
                            log[f"reward/{label}={value}/std"] = float(values[mask].std())
        self._log(log, step=global_step)

    def _citations(self) -> list[str]:
        from .hub import DDPO_CITATION, GRPO_CITATION, SAFEDIFFUSION_R1_CITATION

        return [SAFEDIFFUSION_R1_CITATION, DDPO_CITATION, GRPO_CITATION]

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
        info["recipe"].update(
            {
                "num_generations": c.num_generations,
                "share_initial_noise": c.share_initial_noise,
                "scale_rewards": c.scale_rewards,
                "advantage_std": c.advantage_std,
                "train_skip_last_timestep": c.train_skip_last_timestep,
                "kl_mode": c.kl_mode if c.beta else None,
                "kl_unsafe_weight": c.kl_unsafe_weight if c.beta else None,
                "structure_weight": c.structure_weight or None,
            }
        )
        if self.train_dataset is not None:
            info["dataset_size"] = len(self.train_dataset)
            hub_ids, local = training_data_sources(self.train_dataset)
            info["datasets"] = hub_ids
            info["prompt_sources"] = [f"`{name}` (local, not on the Hub)" for name in local]
            if not hub_ids and not local:
                info["prompt_sources"] = [f"an in-memory `datasets.Dataset` of {len(self.train_dataset)} prompts"]
        return info


