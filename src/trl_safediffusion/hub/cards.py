"""Model cards: [`SafeDiffusionCardInfo`] (what a card reports), [`build_model_card`] (the card, rendered from the
section table `MODEL_CARD_SECTIONS` and the template strings below), writing it into a saved folder, and the facts a
card states (training prompt sources, framework versions, the base model's license).

What trained a model (`method`, `trainer`, `tags`, `citations`) and its recipe come from the caller, the trainers'
`_model_card_info()`; nothing here tells a fixed story.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._card_sections import (
    _STEERING_LIMITATIONS,
    KNOWN_EVAL_DATASETS,
    _eval_results_entries,
    _evaluation_section,
    _is_steering_reward,
    _reward_section,
)
from ._families import DEFAULT_PIPELINE_CLASS, card_family
from ._markdown import _bibtex_block, _table
from .errors import _network_error_types, redact, scrub_tokens

logger = logging.getLogger(__name__)

# Tags of every model card; a trainer adds its own (`DDPOTrainer._tag_names`, `SafeDDPOGRPOTrainer._tag_names`).
LIBRARY_TAGS = ("trl", "trl-safediffusion")
# Tags of the SafeDiffusion-R1 dataset cards (prompts, samples, evaluation results).
SAFEDIFFUSION_R1_TAGS = ("safediffusion-r1", "grpo", "safety")
# The LoRA weights file of a saved LoRA folder (what `load_lora_weights` reads), named in LoRA cards.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

# BibTeX entries a trainer lists in its model cards (`SafeDiffusionCardInfo.citations`).
SAFEDIFFUSION_R1_CITATION = """@article{safediffusionr1,
  title   = {SafeDiffusion-R1: Online Reward Steering for Safe Diffusion Post-Training},
  journal = {arXiv preprint arXiv:2605.18719},
  year    = {2026}
}"""
DDPO_CITATION = """@inproceedings{black2024ddpo,
  title     = {Training Diffusion Models with Reinforcement Learning},
  author    = {Kevin Black and Michael Janner and Yilun Du and Ilya Kostrikov and Sergey Levine},
  booktitle = {International Conference on Learning Representations},
  year      = {2024}
}"""
GRPO_CITATION = """@article{shao2024deepseekmath,
  title   = {DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models},
  author  = {Zhihong Shao and Peiyi Wang and Qihao Zhu and Runxin Xu and Junxiao Song and Mingchuan Zhang and
             Y. K. Li and Y. Wu and Daya Guo},
  journal = {arXiv preprint arXiv:2402.03300},
  year    = {2024}
}"""

# Distributions listed in a model card's "Framework versions" section, with their display names.
FRAMEWORK_DISTRIBUTIONS = (
    ("trl-safediffusion", "trl-safediffusion"),
    ("trl", "TRL"),
    ("diffusers", "Diffusers"),
    ("transformers", "Transformers"),
    ("peft", "PEFT"),
    ("torch", "PyTorch"),
    ("datasets", "Datasets"),
)


@dataclass
class SafeDiffusionCardInfo:
    r"""
    What a model card reports. Every field is optional; the card leaves out what is unknown. The trainers fill it from
    what they know (`DDPOTrainer._model_card_info`): what trained the model (`trainer`, `method`, `tags`,
    `citations`), the base model, the recipe, the reward and the training prompts.

    Args:
        base_model (`str`, *optional*): Hub id or local folder of the pipeline that was fine-tuned. Only a Hub id goes
            into the `base_model` metadata and the loading code; a local folder is named by its folder name.
        license (`str`, *optional*): license id; when `None`, [`write_model_card`] inherits the base model's license
            when it can read it (local base folder, or the Hub when online).
        lora (`bool`, *optional*, defaults to `False`): the folder holds LoRA weights (`load_lora_weights`) rather
            than a full pipeline.
        recipe (`dict`, *optional*): training recipe, e.g. the trainer's config values (`sample_num_steps`,
            `sample_eta`, `sample_guidance_scale`, `num_generations`, `train_learning_rate`, `num_epochs`, ...).
        reward (`dict`, *optional*): reward description (`backend`, `model`, `alpha`, `mode`, `anchors`, ...), e.g.
            `CLIPSteeringReward.describe()`.
        eval_results (`dict[str, dict[str, float]]`, *optional*): `{benchmark: {metric: value}}`, rendered as a table
            and as model-index entries.
        eval_datasets (`dict[str, str]`, *optional*): Hub dataset id of each benchmark for model-index (known suites
            such as I2P are filled in).
        datasets (`list[str]`, *optional*): Hub ids (`namespace/name`) of the training prompt datasets, listed in the
            `datasets` metadata and linked. A value that is not a Hub id (a local file or folder) is named in the
            body only, by its file name.
        prompt_sources (`list[str]`, *optional*): training prompts that are not on the Hub, as markdown phrases named
            in the body (e.g. ``"`prompts.txt` (local, not on the Hub)"`` or ``"drawn by the prompt function
            `animal_prompt`"``).
        trainer (`str`, *optional*): trainer class name, e.g. `"DDPOTrainer"`.
        method (`str`, *optional*): how the model was trained, as the rest of the card's first sentence after
            "A full Stable Diffusion pipeline, ..." (markdown), e.g. `"fine-tuned with DDPO (...)"`. A generic phrase
            when `None`.
        citations (`list[str]`, *optional*): BibTeX entries of the methods used (e.g. [`DDPO_CITATION`]).
        model_name (`str`, *optional*): the card's title; defaults to the repo's name (the part after the namespace)
            or, for a local folder, its folder name.
        repo_id (`str`, *optional*): repo id used in the loading snippet.
        tags (`list[str]`, *optional*): extra tags (e.g. the trainer's), added to the library tags.
        pipeline_class (`str`, *optional*): the stock diffusers pipeline class of the model's family (e.g.
            `"StableDiffusion3Pipeline"`), which the loading code uses; `StableDiffusionPipeline` when `None`.
        family_tags (`list[str]`, *optional*): Hub tags of the model's family (e.g. `["stable-diffusion-3"]`).
        extra (`dict`, *optional*): further run details (e.g. `dataset_size`), listed after the recipe.
        recipe_labels (`dict[str, str]`, *optional*): display names of `recipe` keys in the card's table, e.g.
            `{"num_generations": "Group size"}`; they win over `RECIPE_LABELS`, and a key named nowhere is shown as is.
    """

    base_model: str | None = None
    license: str | None = None
    lora: bool = False
    recipe: dict[str, Any] = field(default_factory=dict)
    reward: dict[str, Any] = field(default_factory=dict)
    eval_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_datasets: dict[str, str] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    prompt_sources: list[str] = field(default_factory=list)
    trainer: str | None = None
    method: str | None = None
    citations: list[str] = field(default_factory=list)
    model_name: str | None = None
    repo_id: str | None = None
    tags: list[str] = field(default_factory=list)
    pipeline_class: str | None = None
    family_tags: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    recipe_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, info: Mapping[str, Any], **overrides) -> SafeDiffusionCardInfo:
        """Build from a plain dict (e.g. the trainer's `_model_card_info()`): keys that are not fields go to `extra`
        and are listed in the card; `None` values count as unknown."""
        known = set(cls.__dataclass_fields__)
        merged = {k: v for k, v in dict(info).items() if v is not None}
        merged.update({k: v for k, v in overrides.items() if v is not None})
        extra = dict(merged.pop("extra", {}))
        extra.update({k: merged.pop(k) for k in sorted(set(merged) - known)})
        return cls(**merged, extra=extra)


# Display names of the recipe keys the trainers pass today. The card renders every recipe key it is given, in the
# caller's order; `SafeDiffusionCardInfo.recipe_labels` wins over these names and a key named nowhere is shown as is.
RECIPE_LABELS = {
    "sample_num_steps": "Sampler steps (DDIM)",
    "sample_eta": "DDIM eta",
    "sample_guidance_scale": "Guidance scale (CFG)",
    "num_generations": "Group size",
    "train_learning_rate": "Learning rate",
    "num_epochs": "Epochs (configured)",
    "epochs_trained": "Epochs trained",
    "train_batch_size": "Train batch size (per process)",
    "sample_batch_size": "Sample batch size (per process)",
    "train_clip_range": "PPO clip range",
    "train_adv_clip_max": "Advantage clip",
    "beta": "KL coefficient (beta)",
    "mixed_precision": "Mixed precision",
    "lora": "LoRA",
    "lora_rank": "LoRA rank",
    "trainable_modules": "Trained UNet modules",
    "train_timestep_window": "Trained timestep window (first fraction of each trajectory)",
    "train_timestep_fraction": "Trained fraction of the window's timesteps",
    "train_skip_last_timestep": "Last (noiseless) timestep skipped in training",
    "share_initial_noise": "Initial noise shared within a group",
    "scale_rewards": "Advantage scaling",
    "kl_mode": "KL compares",
    "kl_unsafe_weight": "KL weight on unsafe prompts",
    "structure_weight": "Structure anchor weight on unsafe prompts",
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(name: str | None) -> bool:
    r"""
    Whether `name` is a Hub repo id (`namespace/name`) and not a local path: an existing file or folder, an absolute
    or relative path (`/...`, `./...`, `~/...`, more than one `/`) is not.

    Args:
        name (`str`, *optional*): a base model, dataset or repo name as a trainer recorded it.
    """
    if not name or os.path.exists(os.path.expanduser(name)):
        return False
    return _HUB_ID.fullmatch(name) is not None and ".." not in name


def _local_name(path: str) -> str:
    """How a card names a local file or folder: its last path component, never the absolute path."""
    return os.path.basename(os.path.normpath(os.path.expanduser(path))) or path


def training_data_sources(dataset) -> tuple[list[str], list[str]]:
    r"""
    Where the prompts of `dataset` came from, as a model card states it: `(hub_ids, local_names)`.

    [`~trl_safediffusion.data.load_prompt_dataset`] records its source in `dataset.info.dataset_name` (the Hub id with
    its namespace, or a local file's name; a mix of sources joined by `" + "`). For a dataset loaded with
    `datasets.load_dataset("namespace/name")` directly, whose info keeps only `name`, the namespace is read from its
    cache folder (`namespace___name`). An in-memory dataset has no source: both lists are empty.

    Args:
        dataset (`datasets.Dataset`): the training prompts.
    """
    info = getattr(dataset, "info", None)
    recorded = getattr(info, "dataset_name", None) if info is not None else None
    if not recorded:
        return [], []
    hub_ids, local = [], []
    for name in (part.strip() for part in str(recorded).split(" + ")):
        if not name:
            continue
        if "/" not in name and not os.path.splitext(name)[1]:
            cached = {
                segment.split("___", 1)[0]
                for f in getattr(dataset, "cache_files", None) or []
                for segment in str(f.get("filename", "")).split(os.sep)
                if segment.endswith(f"___{name}")
            }
            if len(cached) == 1:
                name = f"{cached.pop()}/{name}"
        if is_hub_id(name):
            hub_ids.append(name)
        else:
            local.append(_local_name(name))
    return hub_ids, local


def framework_versions() -> dict[str, str]:
    """`{display name: version}` of the installed distributions a model card lists (`FRAMEWORK_DISTRIBUTIONS`);
    those that are not installed are left out."""
    from importlib import metadata

    versions = {}
    for distribution, label in FRAMEWORK_DISTRIBUTIONS:
        try:
            versions[label] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return versions


# The body of a model card: a title, the intro, then one `## <title>` section per entry of `MODEL_CARD_SECTIONS`
# whose builder returns text. What trained the model (`method`, `trainer`, `tags`, `citations`) comes from the caller.
_CARD_HEAD = "\n# {model_name}\n\n{intro}\n\n"
_INTRO = "A {kind}, {method}.\n\nTrained with {trainer}the trl-safediffusion library."
_DEFAULT_METHOD = "fine-tuned with reinforcement learning"
_KIND_FULL = "full {family} pipeline (diffusers format, safetensors)"
_KIND_LORA = "LoRA adapter (`{weights}`) for the {denoiser} of `{base}`"
_LOAD_SNIPPET = """```python
import torch
from diffusers import {cls}

pipe = {cls}.from_pretrained("{pretrained}", torch_dtype=torch.{dtype}).to("cuda"){where}
{load_lora}image = pipe("a photo of a cat", num_inference_steps={steps}, guidance_scale={guidance}).images[0]
```"""
_LOAD_LORA = 'pipe.load_lora_weights("{repo}")\n'
_LOCAL_BASE_COMMENT = "  # the local base folder it was trained from"
_RECIPE = "{table}\n\nTraining prompts: {prompts}."
_NO_PROMPT_SOURCE = "an in-memory dataset or prompt function that was not named"
# Limitations of every RL fine-tune, listed after those of its reward (e.g. a steering reward's).
_RL_LIMITATIONS = (
    "Reinforcement learning optimises what the reward model scores, which can be exploited (reward hacking); judge "
    "the model by its images, not by the reward alone.",
    "The model inherits the biases and failure modes of its base model. Do not deploy it without an additional "
    "safety filter.",
)


@dataclass
class _CardFacts:
    """What the sections of one card are built from: the (token-scrubbed) info and the names derived from it."""

    info: SafeDiffusionCardInfo
    recipe: dict[str, Any]
    reward: dict[str, Any]
    extra: dict[str, Any]
    model_name: str
    repo: str
    base_is_hub: bool
    base_name: str | None
    hub_datasets: list[str]
    local_prompts: list[str]

    @classmethod
    def of(cls, info: SafeDiffusionCardInfo, folder_name: str | None) -> _CardFacts:
        local_prompts = [f"`{_local_name(d)}` (local, not on the Hub)" for d in info.datasets if d and not is_hub_id(d)]
        model_name = info.model_name or (info.repo_id.split("/")[-1] if info.repo_id else None) or folder_name
        base_is_hub = is_hub_id(info.base_model)
        return cls(
            info=info,
            recipe=scrub_tokens(dict(info.recipe)),
            reward=scrub_tokens(dict(info.reward)),
            extra=scrub_tokens(dict(info.extra)),
            model_name=model_name or "trl-safediffusion-model",
            repo=info.repo_id or folder_name or "<this-repo-id>",
            base_is_hub=base_is_hub,
            base_name=info.base_model if base_is_hub or not info.base_model else _local_name(info.base_model),
            hub_datasets=[d for d in info.datasets if d and is_hub_id(d)],
            local_prompts=local_prompts + [p for p in info.prompt_sources if p],
        )

    @property
    def local_base(self) -> bool:
        return bool(self.info.base_model) and not self.base_is_hub


def _intro(facts: _CardFacts) -> str:
    info, family = facts.info, card_family(facts.info.pipeline_class)
    if info.lora:
        kind = _KIND_LORA.format(weights=LORA_WEIGHT_NAME, denoiser=family.denoiser,
                                 base=facts.base_name or "<base-model-id>")
    else:
        kind = _KIND_FULL.format(family=family.name)
    method = (info.method or _DEFAULT_METHOD).rstrip(". ")
    return _INTRO.format(kind=kind, method=method, trainer=f"the `{info.trainer}` of " if info.trainer else "")


def _load_section(facts: _CardFacts) -> str:
    family = card_family(facts.info.pipeline_class)
    stock = {"cls": facts.info.pipeline_class or DEFAULT_PIPELINE_CLASS, "dtype": family.dtype, "steps": family.steps,
             "guidance": family.guidance_scale}
    if not facts.info.lora:
        return _LOAD_SNIPPET.format(pretrained=facts.repo, where="", load_lora="", **stock)
    return _LOAD_SNIPPET.format(
        **stock,
        pretrained=facts.base_name or "<base-model-id>",
        where=_LOCAL_BASE_COMMENT if facts.local_base else "",
        load_lora=_LOAD_LORA.format(repo=facts.repo),
    )


def _recipe_section(facts: _CardFacts) -> str:
    """The recipe table: base model, trainer and what was fine-tuned, then every recipe key in the caller's order
    (named by `info.recipe_labels`, else `RECIPE_LABELS`, else the key itself), then the run details."""
    info, recipe, family = facts.info, facts.recipe, card_family(facts.info.pipeline_class)
    labels = {**RECIPE_LABELS, **family.recipe_labels(), **info.recipe_labels}
    if info.lora or recipe.get("lora"):
        tuned = "LoRA"
    else:
        tuned = f"part of the {family.denoiser}" if recipe.get("trainable_modules") else f"full {family.denoiser}"
    rows = [
        ("Base model", (f"{facts.base_name} (local folder)" if facts.local_base else facts.base_name) or "unknown"),
        ("Trainer", info.trainer or "unknown"),
        ("Fine-tuning", tuned),
    ]
    rows += [(labels.get(k, k), v) for k, v in recipe.items() if v is not None and k != "lora"]
    rows += [(k, v) for k, v in facts.extra.items() if v is not None]
    sources = [f"[{d}](https://huggingface.co/datasets/{d})" for d in facts.hub_datasets] + facts.local_prompts
    return _RECIPE.format(table=_table(rows, ("Setting", "Value")), prompts=", ".join(sources) or _NO_PROMPT_SOURCE)


def _reward_of(facts: _CardFacts) -> str:
    return _reward_section(facts.reward)


def _evaluation_of(facts: _CardFacts) -> str:
    return _evaluation_section(facts.info.eval_results)


def _limitations_section(facts: _CardFacts) -> str:
    steering = _STEERING_LIMITATIONS if _is_steering_reward(facts.reward) else ()
    return "\n".join(f"- {line}" for line in (*steering, *_RL_LIMITATIONS))


def _versions_section(facts: _CardFacts) -> str:
    return "\n".join(f"- {name}: {version}" for name, version in framework_versions().items())


def _citations_section(facts: _CardFacts) -> str | None:
    return _bibtex_block(facts.info.citations) if facts.info.citations else None


# `(title, builder)` of each section of the card body, in order; a builder returning `None` leaves its section out.
MODEL_CARD_SECTIONS = (
    ("How to load and generate", _load_section),
    ("Training recipe", _recipe_section),
    ("Reward", _reward_of),
    ("Evaluation", _evaluation_of),
    ("Limitations", _limitations_section),
    ("Framework versions", _versions_section),
    ("Citations", _citations_section),
)


def build_model_card(info: SafeDiffusionCardInfo, folder_name: str | None = None):
    r"""
    The model card (`huggingface_hub.ModelCard`) of a model trained with this library: YAML metadata (library,
    pipeline tag, base model, tags, datasets, license, model-index) and a body that says what trained it, then the
    sections of `MODEL_CARD_SECTIONS`: loading code, recipe, training prompts, reward, evaluation, limitations,
    framework versions and citations.

    What the model is and how it was trained comes from `info` (`trainer`, `method`, `tags`, `citations`), never from
    a fixed story; the recipe lists whatever keys `info.recipe` holds; the reward formula and the safety limitations
    appear only for a CLIP steering reward.

    Args:
        info ([`SafeDiffusionCardInfo`]): what to report. Token-like values are scrubbed.
        folder_name (`str`, *optional*): name of the saved folder, the title and the loading path when `info` has no
            `model_name` / `repo_id`.
    """
    from huggingface_hub import ModelCard, ModelCardData

    facts = _CardFacts.of(info, folder_name)
    eval_entries = _eval_results_entries(info.eval_results, info.eval_datasets)
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-image",
        base_model=info.base_model if facts.base_is_hub else None,
        license=info.license,
        tags=list(dict.fromkeys([*LIBRARY_TAGS, "diffusers", "text-to-image", *info.family_tags,
                                 *(["lora"] if info.lora else []), *info.tags])),
        datasets=facts.hub_datasets or None,
        model_name=facts.model_name if eval_entries else None,
        eval_results=eval_entries or None,
    )
    sections = [(title, build(facts)) for title, build in MODEL_CARD_SECTIONS]
    body = _CARD_HEAD.format(model_name=facts.model_name, intro=_intro(facts))
    body += "\n\n".join(f"## {title}\n\n{text}" for title, text in sections if text is not None) + "\n"
    return ModelCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n" + body)


def base_model_license(base_model: str | None, token: str | None = None) -> str | None:
    r"""
    The license of `base_model` when it can be known: from the `README.md` of a local pipeline folder, or from the
    Hub's model info when online. Returns `None` (and logs at debug level) when it cannot be read.

    Args:
        base_model (`str`, *optional*): local folder or Hub id of the base pipeline.
        token (`str`, *optional*): Hub token for private base models (never logged).
    """
    if not base_model:
        return None
    from huggingface_hub import HfApi, ModelCard, constants

    readme = os.path.join(base_model, "README.md")
    if os.path.isdir(base_model):
        if not os.path.isfile(readme):
            return None
        return ModelCard.load(readme).data.license
    if constants.HF_HUB_OFFLINE or not is_hub_id(base_model):
        return None
    try:
        card_data = HfApi(token=token).model_info(base_model, timeout=10).card_data
    except _network_error_types() as err:
        logger.debug("could not read the license of %s: %s", base_model, redact(str(err), token))
        return None
    return getattr(card_data, "license", None) if card_data is not None else None


def write_model_card(folder: str, info: SafeDiffusionCardInfo, token: str | None = None) -> str:
    r"""
    Write `README.md` (the model card of [`build_model_card`]) into `folder`; returns its path. When `info.license`
    is `None` the base model's license is inherited if [`base_model_license`] can read it. Without a `model_name` or
    `repo_id` the card is titled with the folder's name.

    Args:
        folder (`str`): the saved pipeline or LoRA folder.
        info ([`SafeDiffusionCardInfo`]): what to report.
        token (`str`, *optional*): used only to read a private base model's license.
    """
    if info.license is None:
        info = SafeDiffusionCardInfo(**{**info.__dict__, "license": base_model_license(info.base_model, token)})
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "README.md")
    build_model_card(info, folder_name=_local_name(folder)).save(path)
    return path


def write_training_model_card(folder: str, info: Mapping[str, Any] | SafeDiffusionCardInfo, lora: bool | None = None,
                              **overrides) -> str:
    r"""
    Trainer entry point of [`write_model_card`]: `info` may be a plain dict with the keys of
    [`SafeDiffusionCardInfo`] (e.g. `base_model`, `trainer`, `method`, `recipe`, `reward`, `tags`, `citations`).

    Args:
        folder (`str`): the saved pipeline or LoRA folder.
        info (`dict` or [`SafeDiffusionCardInfo`]): what to report.
        lora (`bool`, *optional*): whether the folder holds LoRA weights; overrides `info`.
        overrides: further [`SafeDiffusionCardInfo`] fields (e.g. `repo_id`, `eval_results`, `datasets`).
    """
    if isinstance(info, SafeDiffusionCardInfo):
        card_info = SafeDiffusionCardInfo(**{**info.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
        if lora is not None:
            card_info.lora = lora
    else:
        card_info = SafeDiffusionCardInfo.from_dict(info, lora=lora, **overrides)
    return write_model_card(folder, card_info)


__all__ = [
    "DDPO_CITATION",
    "FRAMEWORK_DISTRIBUTIONS",
    "GRPO_CITATION",
    "KNOWN_EVAL_DATASETS",
    "LIBRARY_TAGS",
    "LORA_WEIGHT_NAME",
    "MODEL_CARD_SECTIONS",
    "RECIPE_LABELS",
    "SAFEDIFFUSION_R1_CITATION",
    "SAFEDIFFUSION_R1_TAGS",
    "SafeDiffusionCardInfo",
    "base_model_license",
    "build_model_card",
    "framework_versions",
    "is_hub_id",
    "training_data_sources",
    "write_model_card",
    "write_training_model_card",
]
