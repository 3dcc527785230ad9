"""Hugging Face Hub publishing: model cards, pipeline / LoRA folders, training-time pushes, checkpoint download,
and datasets of prompts, samples and evaluation results.

Every function here writes its files locally first and uploads the folder afterwards, so a failed upload never loses
work: the folder stays complete and the failure is raised as one [`HubPushError`] naming the repo and the cause (or,
during training, logged by [`CheckpointPusher`] and retried at the next save). Tokens are never logged, never written
into cards or configs, and never part of an error message.

Repo layout written by a run with `hub_strategy="checkpoint"`:

    README.md, model_index.json, unet/, vae/, ...     (or pytorch_lora_weights.safetensors for LoRA)
    checkpoints/checkpoint_<epoch>/                    accelerate `save_state` output + trainer_state.json

[`download_checkpoint`] fetches the latest complete `checkpoints/checkpoint_<epoch>` so that `resume_from` accepts a
repo id.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Tags of every model card; a trainer adds its own (`DDPOTrainer._tag_names`, `SafeDDPOGRPOTrainer._tag_names`).
LIBRARY_TAGS = ("trl", "trl-safediffusion")
# Tags of the SafeDiffusion-R1 dataset cards (prompts, samples, evaluation results).
SAFEDIFFUSION_R1_TAGS = ("safediffusion-r1", "grpo", "safety")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CHECKPOINTS_DIR_IN_REPO = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint_"
TRAINER_STATE_NAME = "trainer_state.json"
HUB_STRATEGIES = ("end", "every_save", "checkpoint")

# Hub dataset ids of known evaluation suites, used for model-index entries (see docs/hub.md).
KNOWN_EVAL_DATASETS = {"i2p": "AIML-TUDA/i2p"}

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
_DATASET_CITATIONS = [SAFEDIFFUSION_R1_CITATION, DDPO_CITATION, GRPO_CITATION]

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


def _bibtex_block(entries: Sequence[str]) -> str:
    return "```bibtex\n" + "\n\n".join(e.strip() for e in entries) + "\n```"


# ====================================================================================================== errors, tokens
class HubPushError(RuntimeError):
    r"""
    An upload to the Hub failed. The local folder that was being uploaded is complete and untouched.

    Args:
        repo_id (`str`): the repo that could not be written.
        cause (`str`): what went wrong (no token in it).
        repo_type (`str`, *optional*, defaults to `"model"`): `"model"` or `"dataset"`.
        local_folder (`str`, *optional*): the local folder that holds everything that was to be uploaded.
    """

    def __init__(self, repo_id: str, cause: str, repo_type: str = "model", local_folder: str | None = None):
        self.repo_id = repo_id
        self.cause = cause
        self.repo_type = repo_type
        self.local_folder = local_folder
        kept = f" The files are kept locally in {local_folder!r}; push them again later." if local_folder else ""
        super().__init__(f"Could not push to the Hub {repo_type} repo {repo_id!r}: {cause}.{kept}")


class HubDownloadError(OSError):
    r"""
    A download from the Hub failed (e.g. fetching a checkpoint for `resume_from`).

    Args:
        repo_id (`str`): the repo that could not be read.
        cause (`str`): what went wrong (no token in it).
    """

    def __init__(self, repo_id: str, cause: str):
        self.repo_id = repo_id
        self.cause = cause
        super().__init__(f"Could not download from Hub repo {repo_id!r}: {cause}")


_TOKEN_KEYS = {"token", "hub_token", "hf_token", "use_auth_token", "auth_token", "access_token", "push_to_hub_token"}
_HF_TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
REDACTED = "<redacted>"


def redact(text: str, token: str | None = None) -> str:
    """`text` with `token` and anything that looks like a Hugging Face token (`hf_...`) replaced by `<redacted>`."""
    if token:
        text = text.replace(token, REDACTED)
    return _HF_TOKEN_PATTERN.sub(REDACTED, text)


def scrub_tokens(obj: Any) -> Any:
    r"""
    A copy of `obj` (nested dicts / lists) that is safe to write to disk: keys naming a token (`token`, `hub_token`,
    `hf_token`, `use_auth_token`, ...) are dropped and strings that look like Hugging Face tokens are redacted.

    Args:
        obj (`Any`): a config dump, card metadata or any JSON-like value.
    """
    if isinstance(obj, Mapping):
        return {k: scrub_tokens(v) for k, v in obj.items() if str(k).lower() not in _TOKEN_KEYS}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub_tokens(v) for v in obj)
    if isinstance(obj, str):
        return redact(obj)
    return obj


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions a Hub call raises for network, HTTP and validation problems (the HTTP client depends on the
    huggingface_hub version: httpx2, httpx or requests)."""
    from huggingface_hub.errors import HfHubHTTPError

    types: list[type[BaseException]] = [HfHubHTTPError, OSError, ValueError]
    for module_name, attr in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        types.append(getattr(module, attr))
    return tuple(types)


def _describe_failure(err: BaseException, token: str | None) -> str:
    """A one-line, token-free cause for `err`."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None) if response is not None else None
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, RepositoryNotFoundError):
        cause = "repository not found or no write access (check the repo id and that the token can write to it)"
    elif isinstance(err, HfHubHTTPError) and status in (401, 403):
        cause = f"HTTP {status}: the token is missing, invalid or lacks write access (log in or pass a write token)"
    elif isinstance(err, HfHubHTTPError) and status is not None:
        cause = f"HTTP {status} from the Hub ({first_line})"
    elif isinstance(err, ValueError):
        cause = f"invalid request ({first_line})"
    else:
        cause = f"network error, the Hub could not be reached ({type(err).__name__}: {first_line})"
    return redact(cause, token)


# ====================================================================================================== model card
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
        extra (`dict`, *optional*): further run details (e.g. `dataset_size`), listed after the recipe.
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
    extra: dict[str, Any] = field(default_factory=dict)

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


_RECIPE_LABELS = {
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
_REWARD_LABELS = {
    "name": "Reward",
    "type": "Type",
    "backend": "Backend",
    "model": "Model",
    "alpha": "Steering strength (alpha)",
    "steering": "Steering mode",
    "mode": "Steering mode",
}
# SafeDiffusion-R1 reward, "translate" (paper) and "projection" (reference code variant) steering.
_STEERING_FORMULAS = {
    "translate": "r(x, p) = cos(E_img(x), normalize(E_txt(p) + alpha * v_safe))",
    "projection": "r(x, p) = cos(E_img(x), normalize(z - (z . v_safe) v_safe + alpha * v_safe)), z = E_txt(p)",
}
_V_SAFE = "v_safe = normalize(mean E_txt(safe anchors) - mean E_txt(unsafe anchors))"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: Iterable[tuple[str, Any]], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in rows]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "eval"


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


def _is_steering_reward(reward: Mapping[str, Any]) -> bool:
    if reward.get("type") == "CLIPSteeringReward" or {"alpha", "anchors", "safe_anchors", "unsafe_anchors"} & set(reward):
        return True
    return any(isinstance(c, Mapping) and _is_steering_reward(c) for c in reward.get("components") or [])


def _steering_part(reward: Mapping[str, Any]) -> Mapping[str, Any]:
    """The steering reward's own description (the reward itself, or its component in a combined reward)."""
    if reward.get("type") == "CLIPSteeringReward" or {"alpha", "anchors", "safe_anchors", "unsafe_anchors"} & set(reward):
        return reward
    return next(c for c in reward.get("components") or [] if isinstance(c, Mapping) and _is_steering_reward(c))


def _eval_results_entries(info: SafeDiffusionCardInfo, model_name: str) -> list:
    from huggingface_hub import EvalResult

    entries = []
    for benchmark, metrics in info.eval_results.items():
        dataset_type = info.eval_datasets.get(benchmark) or KNOWN_EVAL_DATASETS.get(_slug(benchmark)) or _slug(benchmark)
        for metric, value in metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                continue
            entries.append(
                EvalResult(
                    task_type="text-to-image",
                    task_name="Text-to-Image",
                    dataset_type=dataset_type,
                    dataset_name=benchmark,
                    metric_type=_slug(metric),
                    metric_name=metric,
                    metric_value=value,
                )
            )
    return entries


def _reward_section(reward: Mapping[str, Any]) -> str:
    steering = _is_steering_reward(reward)
    if steering:
        part = _steering_part(reward)
        mode = str(part.get("mode") or part.get("steering") or "translate").lower()
        formula = f"CLIP steering reward:\n\n    {_STEERING_FORMULAS['projection' if 'proj' in mode else 'translate']}\n    {_V_SAFE}"
    else:
        formula = "The reward used for training:"
    anchors_of = dict(reward.get("anchors") or {}) if isinstance(reward.get("anchors"), Mapping) else {}
    safe = reward.get("safe_anchors", anchors_of.get("safe"))
    unsafe = reward.get("unsafe_anchors", anchors_of.get("unsafe"))
    rows = [(_REWARD_LABELS.get(k, k), v) for k, v in reward.items()
            if v is not None and k not in ("safe_anchors", "unsafe_anchors", "anchors", "components")]
    if anchors_of.get("name"):
        rows.append(("Anchor set", anchors_of["name"]))
    for component in reward.get("components") or []:
        if isinstance(component, Mapping):
            described = ", ".join(f"{k}={_fmt(v)}" for k, v in component.items()
                                  if v is not None and k not in ("name", "anchors", "safe_anchors", "unsafe_anchors"))
            rows.append((f"Component {component.get('name', '?')}", described))
    anchors = []
    for phrases, title in ((safe, "Safe anchors"), (unsafe, "Unsafe anchors")):
        if phrases is not None:
            phrases = list(phrases)
            listed = "\n".join(f"- {p}" for p in phrases) if phrases else "- (none)"
            anchors.append(f"{title} ({len(phrases)}):\n\n{listed}")
    table = _table(rows, ("Setting", "Value")) if rows else "The reward was not described."
    return "\n\n".join([formula, table, *anchors])


def build_model_card(info: SafeDiffusionCardInfo, folder_name: str | None = None):
    r"""
    The model card (`huggingface_hub.ModelCard`) of a model trained with this library: YAML metadata (library,
    pipeline tag, base model, tags, datasets, license, model-index) and a body that says what trained it, with loading
    code, recipe, training prompts, reward, evaluation, limitations, framework versions and citations.

    What the model is and how it was trained comes from `info` (`trainer`, `method`, `tags`, `citations`), never from
    a fixed story; the reward formula and the safety limitations appear only for a CLIP steering reward.

    Args:
        info ([`SafeDiffusionCardInfo`]): what to report. Token-like values are scrubbed.
        folder_name (`str`, *optional*): name of the saved folder, the title and the loading path when `info` has no
            `model_name` / `repo_id`.
    """
    from huggingface_hub import ModelCard, ModelCardData

    recipe = scrub_tokens(dict(info.recipe))
    reward = scrub_tokens(dict(info.reward))
    extra = scrub_tokens(dict(info.extra))
    hub_datasets = [d for d in info.datasets if d and is_hub_id(d)]
    local_prompts = [f"`{_local_name(d)}` (local, not on the Hub)" for d in info.datasets if d and not is_hub_id(d)]
    local_prompts += [p for p in info.prompt_sources if p]
    model_name = info.model_name or (info.repo_id.split("/")[-1] if info.repo_id else None) or folder_name
    model_name = model_name or "trl-safediffusion-model"
    base_is_hub = is_hub_id(info.base_model)
    base_name = info.base_model if base_is_hub or not info.base_model else _local_name(info.base_model)
    tags = list(dict.fromkeys([*LIBRARY_TAGS, "diffusers", "text-to-image", *(["lora"] if info.lora else []), *info.tags]))
    eval_entries = _eval_results_entries(info, model_name)
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-image",
        base_model=info.base_model if base_is_hub else None,
        license=info.license,
        tags=tags,
        datasets=hub_datasets or None,
        model_name=model_name if eval_entries else None,
        eval_results=eval_entries or None,
    )

    repo = info.repo_id or folder_name or "<this-repo-id>"
    if info.lora:
        base = base_name or "<base-model-id>"
        where = "" if base_is_hub or not info.base_model else "  # the local base folder it was trained from"
        load = (
            "```python\nimport torch\nfrom diffusers import StableDiffusionPipeline\n\n"
            f'pipe = StableDiffusionPipeline.from_pretrained("{base}", torch_dtype=torch.float16).to("cuda"){where}\n'
            f'pipe.load_lora_weights("{repo}")\n'
            'image = pipe("a photo of a cat", num_inference_steps=50, guidance_scale=5.0).images[0]\n```'
        )
        kind = f"LoRA adapter (`{LORA_WEIGHT_NAME}`) for the UNet of `{base}`"
    else:
        load = (
            "```python\nimport torch\nfrom diffusers import StableDiffusionPipeline\n\n"
            f'pipe = StableDiffusionPipeline.from_pretrained("{repo}", torch_dtype=torch.float16).to("cuda")\n'
            'image = pipe("a photo of a cat", num_inference_steps=50, guidance_scale=5.0).images[0]\n```'
        )
        kind = "full Stable Diffusion pipeline (diffusers format, safetensors)"

    method = info.method or "fine-tuned with reinforcement learning"
    trainer = f"the `{info.trainer}` of " if info.trainer else ""
    intro = f"A {kind}, {method.rstrip('. ')}.\n\nTrained with {trainer}the trl-safediffusion library."

    base_row = base_name if base_is_hub or not info.base_model else f"{base_name} (local folder)"
    recipe_rows = [("Base model", base_row or "unknown"), ("Trainer", info.trainer or "unknown")]
    tuned = "LoRA" if info.lora or recipe.get("lora") else ("part of the UNet" if recipe.get("trainable_modules") else "full UNet")
    recipe_rows.append(("Fine-tuning", tuned))
    recipe_rows += [(_RECIPE_LABELS.get(k, k), v) for k, v in recipe.items() if v is not None and k != "lora"]
    recipe_rows += [(k, v) for k, v in extra.items() if v is not None]

    sources = [f"[{d}](https://huggingface.co/datasets/{d})" for d in hub_datasets]
    sources += local_prompts
    prompts_line = ", ".join(sources) or "an in-memory dataset or prompt function that was not named"

    if info.eval_results:
        metrics = sorted({m for per in info.eval_results.values() for m in per})
        header = "| Benchmark | " + " | ".join(metrics) + " |"
        lines = [header, "|---|" + "---|" * len(metrics)]
        for benchmark, per in info.eval_results.items():
            lines.append(f"| {_fmt(benchmark)} | " + " | ".join(_fmt(per.get(m, "")) for m in metrics) + " |")
        evaluation = "\n".join(lines)
    else:
        evaluation = "No evaluation results were recorded for this checkpoint."

    limitations = []
    if _is_steering_reward(reward):
        limitations += [
            "Safety is measured with automatic detectors (e.g. NudeNet, Q16) whose protocols differ across papers; "
            "numbers are only comparable under the same protocol, prompt set and thresholds.",
            "The reward steers toward CLIP's notion of the anchor phrases; harm types far from the anchors may be "
            "reduced less, and adversarial prompts can still produce unsafe images.",
        ]
    limitations += [
        "Reinforcement learning optimises what the reward model scores, which can be exploited (reward hacking); "
        "judge the model by its images, not by the reward alone.",
        "The model inherits the biases and failure modes of its base model. Do not deploy it without an additional "
        "safety filter.",
    ]
    limitations_text = "\n".join(f"- {line}" for line in limitations)
    versions = "\n".join(f"- {name}: {version}" for name, version in framework_versions().items())
    citations = f"\n## Citations\n\n{_bibtex_block(info.citations)}\n" if info.citations else ""
    body = f"""
# {model_name}

{intro}

## How to load and generate

{load}

## Training recipe

{_table(recipe_rows, ("Setting", "Value"))}

Training prompts: {prompts_line}.

## Reward

{_reward_section(reward)}

## Evaluation

{evaluation}

## Limitations

{limitations_text}

## Framework versions

{versions}
{citations}"""
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


# ====================================================================================================== pipelines
def save_pipeline_for_hub(pipeline, folder: str, *, lora: bool, fuse: bool = False,
                          card_info: SafeDiffusionCardInfo | None = None, adapter_name: str = "default") -> str:
    r"""
    Save a `StableDiffusionPipeline` in the formats the ecosystem loads without this library, always with a model
    card, safetensors only; returns `folder`.

    - full fine-tune (`lora=False`): `pipeline.save_pretrained(folder)`, loadable with
      `StableDiffusionPipeline.from_pretrained(folder)`;
    - LoRA (`lora=True`, the UNet carries peft adapters added with `unet.add_adapter(LoraConfig(...))`):
      `pytorch_lora_weights.safetensors` with the adapter config (rank, alpha, targets) in its metadata, loadable with
      `StableDiffusionPipeline.load_lora_weights(folder)`;
    - LoRA with `fuse=True`: the adapters are merged into a copy of the UNet and the full pipeline is saved (the
      pipeline passed in is not modified).

    Args:
        pipeline (`diffusers.StableDiffusionPipeline`): the trained pipeline.
        folder (`str`): output folder (created).
        lora (`bool`): whether the UNet was trained with LoRA adapters.
        fuse (`bool`, *optional*, defaults to `False`): with `lora=True`, save the fused full pipeline instead.
        card_info ([`SafeDiffusionCardInfo`], *optional*): model card content; a minimal card is written otherwise.
        adapter_name (`str`, *optional*, defaults to `"default"`): the peft adapter to save.
    """
    from diffusers import StableDiffusionPipeline

    os.makedirs(folder, exist_ok=True)
    if not lora:
        pipeline.save_pretrained(folder, safe_serialization=True)
    elif not fuse:
        from peft.utils import get_peft_model_state_dict

        unet = pipeline.unet
        if adapter_name not in getattr(unet, "peft_config", {}):
            raise ValueError(
                f"save_pipeline_for_hub(lora=True): the UNet has no LoRA adapter {adapter_name!r}; add one with "
                "unet.add_adapter(LoraConfig(...)) or pass lora=False to save the full pipeline"
            )
        state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
        state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
        StableDiffusionPipeline.save_lora_weights(
            save_directory=folder,
            unet_lora_layers=state,
            safe_serialization=True,
            unet_lora_adapter_metadata=unet.peft_config[adapter_name].to_dict(),
        )
    else:
        _save_fused_pipeline(pipeline, folder)
    info = card_info or SafeDiffusionCardInfo()
    write_model_card(folder, SafeDiffusionCardInfo(**{**info.__dict__, "lora": lora and not fuse}))
    return folder


def _save_fused_pipeline(pipeline, folder: str) -> None:
    """Merge the UNet's LoRA adapters into a plain UNet copy and save the full pipeline with it."""
    from .pipelines.stable_diffusion import fuse_lora_unet

    plain = fuse_lora_unet(pipeline.unet)
    components = dict(pipeline.components)
    components["unet"] = plain
    type(pipeline)(**components).save_pretrained(folder, safe_serialization=True)


# ====================================================================================================== pushing
def push_folder_to_hub(folder: str, repo_id: str, *, repo_type: str = "model", private: bool | None = None,
                       token: str | None = None, commit_message: str | None = None, revision: str | None = None,
                       path_in_repo: str | None = None, allow_patterns: list[str] | None = None,
                       delete_patterns: list[str] | None = None) -> str:
    r"""
    Create `repo_id` if needed and upload `folder` to it in one commit; returns the commit URL.

    The folder is only read. Any failure (no network, bad token, 4xx / 5xx, unknown revision) is raised as one
    [`HubPushError`] whose message names the repo, the cause and the local folder, and never contains the token.

    Args:
        folder (`str`): local folder to upload.
        repo_id (`str`): `namespace/name` (or `name` for the token's user).
        repo_type (`str`, *optional*, defaults to `"model"`): `"model"` or `"dataset"`.
        private (`bool`, *optional*): visibility when the repo is created (`None`: the Hub's default).
        token (`str`, *optional*): write token; defaults to the logged-in token / `HF_TOKEN`.
        commit_message (`str`, *optional*): commit message.
        revision (`str`, *optional*): branch to commit to; created from `main` if missing.
        path_in_repo (`str`, *optional*): folder in the repo to upload into (repo root by default).
        allow_patterns (`list[str]`, *optional*): only upload files matching these patterns.
        delete_patterns (`list[str]`, *optional*): remote files (relative to `path_in_repo`) to delete in the same
            commit when they are not re-uploaded.
    """
    if not os.path.isdir(folder):
        raise ValueError(f"push_folder_to_hub: {folder!r} is not a folder; save the model or dataset there first")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        full_repo_id = url.repo_id
        if revision is not None and revision != "main":
            api.create_branch(full_repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        commit = api.upload_folder(
            repo_id=full_repo_id,
            folder_path=folder,
            path_in_repo=path_in_repo,
            repo_type=repo_type,
            revision=revision,
            commit_message=commit_message or "Upload with trl-safediffusion",
            allow_patterns=allow_patterns,
            delete_patterns=delete_patterns,
        )
    except _network_error_types() as err:
        raise HubPushError(repo_id, _describe_failure(err, token), repo_type=repo_type, local_folder=folder) from err
    logger.info("pushed %s to %s", folder, commit.commit_url)
    return commit.commit_url


def _push_operations(repo_id: str, additions: list[tuple[str, str]], deletions: list[str], *, repo_type: str,
                     private: bool | None, token: str | None, commit_message: str, revision: str | None) -> str:
    """One commit adding `(path_in_repo, local_path)` files and deleting `deletions` folders; raises HubPushError."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=local) for p, local in additions]
    operations += [CommitOperationDelete(path_in_repo=p.rstrip("/") + "/", is_folder=True) for p in deletions]
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(url.repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        commit = api.create_commit(
            url.repo_id, operations, commit_message=commit_message, repo_type=repo_type, revision=revision
        )
    except _network_error_types() as err:
        raise HubPushError(repo_id, _describe_failure(err, token), repo_type=repo_type) from err
    return commit.commit_url


def _files_under(folder: str, prefix: str) -> list[tuple[str, str]]:
    """`(path_in_repo, local_path)` for every file under `folder`, with `prefix/` in front of the relative path."""
    out = []
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            local = os.path.join(root, name)
            rel = os.path.relpath(local, folder).replace(os.sep, "/")
            out.append(((f"{prefix}/{rel}" if prefix else rel), local))
    return sorted(out)


def checkpoint_path_in_repo(epoch: int) -> str:
    """Where the checkpoint of `epoch` lives in a repo pushed with `hub_strategy="checkpoint"`."""
    return f"{CHECKPOINTS_DIR_IN_REPO}/{CHECKPOINT_PREFIX}{epoch}"


class CheckpointPusher:
    r"""
    Training-time publishing for a `hub_strategy`:

    - `"end"`: [`on_save`] does nothing (the trainer pushes the final model with `push_to_hub`);
    - `"every_save"`: every save pushes the model folder (pipeline or LoRA weights + README.md) to the repo root;
    - `"checkpoint"`: as `"every_save"`, and the accelerate checkpoint folder goes to
      `checkpoints/checkpoint_<epoch>/` in the same commit, so that `resume_from=<repo id>` can resume elsewhere.

    A failed push never stops training: it is logged as a (token-free) warning, remembered in `failed_pushes`, and
    retried at the next save, which uploads the newest model folder and checkpoint (they supersede the failed ones).
    Only the main process uploads; on other processes every call is a no-op.

    Args:
        repo_id (`str`): target model repo.
        strategy (`str`, *optional*, defaults to `"every_save"`): one of `"end"`, `"every_save"`, `"checkpoint"`.
        token (`str`, *optional*): write token (kept in memory only).
        private (`bool`, *optional*): visibility when the repo is created.
        is_main_process (`bool`, *optional*, defaults to `True`): pass `accelerator.is_main_process`.
        revision (`str`, *optional*): branch to push to.
        checkpoint_limit (`int`, *optional*): keep at most this many checkpoints in the repo; older ones that this
            pusher uploaded are deleted in the same commit (`None` keeps all).
    """

    def __init__(self, repo_id: str, strategy: str = "every_save", token: str | None = None,
                 private: bool | None = None, is_main_process: bool = True, revision: str | None = None,
                 checkpoint_limit: int | None = None):
        if strategy not in HUB_STRATEGIES:
            raise ValueError(f"CheckpointPusher: strategy must be one of {HUB_STRATEGIES}, got {strategy!r}")
        if checkpoint_limit is not None and checkpoint_limit < 1:
            raise ValueError(f"CheckpointPusher: checkpoint_limit must be >= 1 or None, got {checkpoint_limit}")
        self.repo_id = repo_id
        self.strategy = strategy
        self._token = token
        self.private = private
        self.is_main_process = is_main_process
        self.revision = revision
        self.checkpoint_limit = checkpoint_limit
        self.pushed_checkpoints: list[int] = []
        self.failed_pushes: list[str] = []
        self.last_commit_url: str | None = None

    def __repr__(self) -> str:  # no token in reprs either
        return f"CheckpointPusher(repo_id={self.repo_id!r}, strategy={self.strategy!r})"

    @property
    def pending(self) -> bool:
        """Whether the last push failed (the next save retries)."""
        return bool(self.failed_pushes) and self.last_commit_url is None

    def on_save(self, model_dir: str | None, checkpoint_dir: str | None = None, epoch: int | None = None) -> bool:
        r"""
        Push after a save. Returns `True` if a commit was made, `False` if nothing was pushed (strategy `"end"`, not
        the main process, or the push failed and will be retried at the next save).

        Args:
            model_dir (`str`, *optional*): saved model folder (pipeline or LoRA weights with README.md).
            checkpoint_dir (`str`, *optional*): accelerate checkpoint folder; uploaded only with `"checkpoint"`.
            epoch (`int`, *optional*): the epoch of the checkpoint (required when a checkpoint is uploaded; read from
                a `checkpoint_<epoch>` folder name otherwise).
        """
        if not self.is_main_process or self.strategy == "end":
            return False
        additions: list[tuple[str, str]] = []
        if model_dir is not None:
            additions += [
                (p, local) for p, local in _files_under(model_dir, "")
                if not p.startswith(CHECKPOINTS_DIR_IN_REPO + "/")
            ]
        deletions: list[str] = []
        if self.strategy == "checkpoint" and checkpoint_dir is not None:
            if epoch is None:
                name = os.path.basename(os.path.normpath(checkpoint_dir))
                if not (name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX):].isdigit()):
                    raise ValueError(
                        f"CheckpointPusher.on_save: pass epoch= for checkpoint folder {checkpoint_dir!r} "
                        f"(its name is not {CHECKPOINT_PREFIX}<epoch>)"
                    )
                epoch = int(name[len(CHECKPOINT_PREFIX):])
            additions += _files_under(checkpoint_dir, checkpoint_path_in_repo(epoch))
            kept = sorted({*self.pushed_checkpoints, epoch})
            if self.checkpoint_limit is not None:
                deletions = [checkpoint_path_in_repo(e) for e in kept[: -self.checkpoint_limit] if e != epoch]
        if not additions:
            return False
        retry = " (retrying the failed push)" if self.pending else ""
        message = f"Training checkpoint, epoch {epoch}" if epoch is not None else "Training save"
        try:
            url = _push_operations(
                self.repo_id, additions, deletions, repo_type="model", private=self.private, token=self._token,
                commit_message=message + retry, revision=self.revision,
            )
        except HubPushError as err:
            self.failed_pushes.append(str(err))
            self.last_commit_url = None
            logger.warning("%s Training continues; the push is retried at the next save.", err)
            return False
        if self.strategy == "checkpoint" and checkpoint_dir is not None:
            self.pushed_checkpoints = [e for e in sorted({*self.pushed_checkpoints, epoch})
                                       if checkpoint_path_in_repo(e) not in deletions]
        self.last_commit_url = url
        logger.info("pushed %s to %s", message.lower(), url)
        return True


# ====================================================================================================== resuming
def is_local_or_repo_id(name: str) -> str:
    r"""
    `"local"` when `name` exists on disk (a local path always wins), `"repo"` when it looks like a Hub repo id
    (`namespace/name`); raises a `ValueError` otherwise.

    Args:
        name (`str`): a folder or a repo id, e.g. a `resume_from` value.
    """
    if os.path.exists(os.path.expanduser(name)):
        return "local"
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) and ".." not in name and not name.endswith(".git"):
        return "repo"
    raise ValueError(
        f"{name!r} is neither an existing local path nor a Hub repo id of the form 'namespace/name'; "
        "check the path or the repo id"
    )


def download_checkpoint(repo_id: str, revision: str | None = None, token: str | None = None,
                        local_dir: str | None = None, epoch: int | None = None) -> str:
    r"""
    Download the latest complete training checkpoint pushed with `hub_strategy="checkpoint"` (the highest
    `checkpoints/checkpoint_<epoch>/` that holds `trainer_state.json`) and return its local folder, ready for
    `accelerator.load_state`.

    Args:
        repo_id (`str`): the model repo the run pushed to.
        revision (`str`, *optional*): branch or commit.
        token (`str`, *optional*): read token for private repos.
        local_dir (`str`, *optional*): where to put the files (the Hub cache by default).
        epoch (`int`, *optional*): download this epoch's checkpoint instead of the latest.

    Raises:
        `FileNotFoundError` when the repo holds no complete checkpoint; [`HubDownloadError`] (an `OSError`) for
        network or access problems.
    """
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(token=token)
    try:
        files = api.list_repo_files(repo_id, revision=revision)
    except _network_error_types() as err:
        raise HubDownloadError(repo_id, f"could not list its files: {_describe_failure(err, token)}") from err
    pattern = re.compile(rf"^{CHECKPOINTS_DIR_IN_REPO}/{CHECKPOINT_PREFIX}(\d+)/{re.escape(TRAINER_STATE_NAME)}$")
    epochs = sorted(int(m.group(1)) for m in map(pattern.match, files) if m is not None)
    if epoch is not None:
        epochs = [e for e in epochs if e == epoch]
    if not epochs:
        which = f"for epoch {epoch} " if epoch is not None else ""
        raise FileNotFoundError(
            f"Hub repo {repo_id!r} holds no complete checkpoint {which}(a {CHECKPOINTS_DIR_IN_REPO}/"
            f"{CHECKPOINT_PREFIX}<epoch>/ folder with {TRAINER_STATE_NAME}); it must be pushed with "
            "hub_strategy='checkpoint'"
        )
    in_repo = checkpoint_path_in_repo(epochs[-1])
    try:
        root = snapshot_download(
            repo_id, revision=revision, token=token, local_dir=local_dir, allow_patterns=[f"{in_repo}/*"]
        )
    except _network_error_types() as err:
        raise HubDownloadError(repo_id, f"could not download {in_repo}: {_describe_failure(err, token)}") from err
    path = os.path.join(root, *in_repo.split("/"))
    logger.info("downloaded checkpoint %s of %s to %s", in_repo, repo_id, path)
    return path


# ====================================================================================================== datasets
def _dataset_card(repo_id: str, *, pretty_name: str, description: str, columns: Mapping[str, str],
                  splits_glob: Mapping[str, str], tags: Sequence[str] = (), license: str | None = None,
                  extra_body: str = "", method_tags: Sequence[str] = SAFEDIFFUSION_R1_TAGS,
                  citations: Sequence[str] = tuple(_DATASET_CITATIONS)) -> str:
    """README.md text of a dataset card (YAML metadata with explicit `configs`, then a body)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        pretty_name=pretty_name,
        license=license,
        tags=list(dict.fromkeys([*LIBRARY_TAGS, *method_tags, *tags])),
        task_categories=["text-to-image"],
        configs=[{"config_name": "default",
                  "data_files": [{"split": s, "path": p} for s, p in splits_glob.items()]}],
    )
    column_table = _table(columns.items(), ("Column", "Meaning"))
    body = f"""
# {pretty_name}

{description}

## Columns

{column_table}

## Loading

```python
from datasets import load_dataset

ds = load_dataset("{repo_id}")
```
{extra_body}
## Citation

{_bibtex_block(list(citations))}
"""
    return str(DatasetCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body))


def _as_dataset(data, what: str):
    import datasets

    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, Mapping):
        return datasets.Dataset.from_dict(dict(data))
    if isinstance(data, Sequence) and not isinstance(data, str):
        rows = list(data)
        if all(isinstance(r, str) for r in rows):
            return datasets.Dataset.from_dict({"prompt": rows})
        if all(isinstance(r, Mapping) for r in rows):
            return datasets.Dataset.from_list([dict(r) for r in rows])
    raise ValueError(
        f"{what}: expected a datasets.Dataset, a dict of columns, a list of row dicts or a list of prompts, "
        f"got {type(data).__name__}"
    )


def _local_dataset_dir(local_dir: str | None, kind: str) -> str:
    if local_dir is None:
        local_dir = tempfile.mkdtemp(prefix=f"trl-safediffusion-{kind}-")
        logger.info("writing the %s dataset to %s before uploading", kind, local_dir)
    os.makedirs(os.path.join(local_dir, "data"), exist_ok=True)
    return local_dir


def push_prompt_dataset(dataset, repo_id: str, *, local_dir: str | None = None, split: str = "train",
                        private: bool | None = None, token: str | None = None, commit_message: str | None = None,
                        revision: str | None = None, source: str | None = None, license: str | None = None) -> str:
    r"""
    Publish the prompt dataset a run trained on (parquet + dataset card); returns the commit URL.

    Files are written to `local_dir` first (`data/<split>-00000-of-00001.parquet`, `README.md`), then uploaded.

    Args:
        dataset (`datasets.Dataset`, `dict` of columns, list of rows or list of prompts): needs a `prompt` column;
            other columns (e.g. `label`, `category`) are kept.
        repo_id (`str`): dataset repo.
        local_dir (`str`, *optional*): folder for the local copy (a new temporary folder by default).
        split (`str`, *optional*, defaults to `"train"`): split name.
        private, token, commit_message, revision: as in [`push_folder_to_hub`].
        source (`str`, *optional*): where the prompts came from (Hub id, file), stated in the card.
        license (`str`, *optional*): license of the prompts.
    """
    ds = _as_dataset(dataset, "push_prompt_dataset")
    if "prompt" not in ds.column_names:
        raise ValueError(f"push_prompt_dataset: the dataset needs a 'prompt' column, it has {ds.column_names}")
    local_dir = _local_dataset_dir(local_dir, "prompts")
    ds.to_parquet(os.path.join(local_dir, "data", f"{split}-00000-of-00001.parquet"))
    columns = {c: ("the text prompt" if c == "prompt" else "prompt metadata passed to the reward") for c in ds.column_names}
    src = f" Source: `{source}`." if source else ""
    card = _dataset_card(
        repo_id, pretty_name="SafeDiffusion-R1 training prompts",
        description=f"The {ds.num_rows} prompts a SafeDiffusion-R1 run trained on (unsafe and benign).{src}",
        columns=columns, splits_glob={split: f"data/{split}-*.parquet"}, tags=["prompts"], license=license,
    )
    with open(os.path.join(local_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    return push_folder_to_hub(local_dir, repo_id, repo_type="dataset", private=private, token=token,
                              commit_message=commit_message or "Upload training prompts", revision=revision)


def _to_pil_images(images) -> list:
    """PIL RGB images from a (B, 3, H, W) float tensor / array in [0, 1], a (B, H, W, 3) uint8 array, or PIL images."""
    import numpy as np
    from PIL import Image

    if isinstance(images, (list, tuple)) and all(isinstance(im, Image.Image) for im in images):
        return [im.convert("RGB") for im in images]
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    array = np.asarray(images)
    if array.ndim != 4:
        raise ValueError(f"samples_to_dataset: images must be a batch (B, 3, H, W) or (B, H, W, 3), got shape {array.shape}")
    if array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)  # (B, H, W, C)
    if array.dtype != np.uint8:
        array = np.clip(np.round(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return [Image.fromarray(a, mode="RGB") for a in array]


def _column(values, n: int, name: str) -> list:
    if hasattr(values, "detach"):
        values = values.detach().cpu().tolist()
    elif hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (str, int, float)) or values is None:
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"samples_to_dataset: {name} has {len(values)} values for {n} images")
    return values


def samples_to_dataset(images, prompts: Sequence[str], labels=None, rewards=None,
                       reward_components: Mapping[str, Any] | None = None, epoch=None, seed=None):
    r"""
    A `datasets.Dataset` of sampled images with their prompt, label, reward, reward components, epoch and seed.

    Columns: `image` (`datasets.Image`, stored as PNG), `prompt`, `label` (e.g. `"unsafe"` / `"safe"`),
    `reward` (float64), `reward_<name>` for each component, `epoch` (int64), `seed` (int64).

    Args:
        images (`torch.Tensor`, `np.ndarray` or list of `PIL.Image`): a batch, float (B, 3, H, W) in [0, 1] as the
            trainer's reward functions receive it, or uint8 (B, H, W, 3).
        prompts (`list[str]`): one prompt per image.
        labels (`list[str]` or `str`, *optional*): prompt labels.
        rewards (sequence of `float`, *optional*): total reward per image.
        reward_components (`dict[str, sequence of float]`, *optional*): per-image components (e.g. from
            `reward_metadata`).
        epoch (`int` or sequence of `int`, *optional*): training epoch of each image.
        seed (`int` or sequence of `int`, *optional*): sampling seed of each image.
    """
    import datasets

    pil = _to_pil_images(images)
    n = len(pil)
    columns: dict[str, list] = {"image": pil, "prompt": _column(list(prompts), n, "prompts")}
    features = {"image": datasets.Image(), "prompt": datasets.Value("string")}
    columns["label"] = _column(labels, n, "labels")
    features["label"] = datasets.Value("string")
    columns["reward"] = [None if r is None else float(r) for r in _column(rewards, n, "rewards")]
    features["reward"] = datasets.Value("float64")
    for name, values in (reward_components or {}).items():
        key = f"reward_{_slug(name).replace('-', '_')}"
        columns[key] = [None if v is None else float(v) for v in _column(values, n, f"reward_components[{name!r}]")]
        features[key] = datasets.Value("float64")
    for name, values in (("epoch", epoch), ("seed", seed)):
        columns[name] = [None if v is None else int(v) for v in _column(values, n, name)]
        features[name] = datasets.Value("int64")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def push_samples_dataset(dataset, repo_id: str, *, local_dir: str | None = None, split: str = "train",
                         shard_name: str | None = None, private: bool | None = None, token: str | None = None,
                         commit_message: str | None = None, revision: str | None = None,
                         model_repo_id: str | None = None, method: str = "SafeDiffusion-R1",
                         method_tags: Sequence[str] = SAFEDIFFUSION_R1_TAGS,
                         citations: Sequence[str] | None = None) -> str:
    r"""
    Publish sampled images (a [`samples_to_dataset`] dataset) with a dataset card; returns the commit URL.

    Every call adds one parquet shard, `data/<split>-<shard_name>.parquet` (by default `epoch<epoch>` when all rows
    share an epoch), so calling it every k epochs grows one dataset; only the new shard and the card are uploaded.

    Args:
        dataset (`datasets.Dataset`): from [`samples_to_dataset`].
        repo_id (`str`): dataset repo.
        local_dir (`str`, *optional*): folder that keeps the local copy of all shards (temporary by default).
        split (`str`, *optional*, defaults to `"train"`): split name.
        shard_name (`str`, *optional*): shard file name suffix.
        private, token, commit_message, revision: as in [`push_folder_to_hub`].
        model_repo_id (`str`, *optional*): the model repo these samples come from, linked in the card.
        method (`str`, *optional*, defaults to `"SafeDiffusion-R1"`): the training method named in the card's title
            and text (e.g. `"DDPO"` for a `DDPOTrainer` run).
        method_tags (`list[str]`, *optional*): the method's card tags (by default SafeDiffusion-R1's).
        citations (`list[str]`, *optional*): BibTeX entries of the card (by default SafeDiffusion-R1, DDPO, GRPO).
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset) or "image" not in dataset.column_names:
        raise ValueError("push_samples_dataset: pass the datasets.Dataset returned by samples_to_dataset(...)")
    if shard_name is None:
        epochs = set(dataset["epoch"]) if "epoch" in dataset.column_names else set()
        shard_name = f"epoch{int(next(iter(epochs))):06d}" if len(epochs) == 1 and None not in epochs else "samples"
    if not re.fullmatch(r"[\w.-]+", shard_name):
        raise ValueError(f"push_samples_dataset: shard_name must be letters, digits, '-', '_' or '.', got {shard_name!r}")
    local_dir = _local_dataset_dir(local_dir, "samples")
    shard = f"data/{split}-{shard_name}.parquet"
    dataset.to_parquet(os.path.join(local_dir, *shard.split("/")))
    columns = {"image": "sampled image (PNG)", "prompt": "prompt", "label": "prompt label (e.g. unsafe / safe)",
               "reward": "total reward", "epoch": "training epoch", "seed": "sampling seed"}
    for c in dataset.column_names:
        columns.setdefault(c, f"reward component `{c[len('reward_'):]}`" if c.startswith("reward_") else c)
    model = f" Samples of [{model_repo_id}](https://huggingface.co/{model_repo_id})." if model_repo_id else ""
    card = _dataset_card(
        repo_id, pretty_name=f"{method} training samples",
        description=f"Images sampled during {method} training, with the prompt, its label, the reward and its "
        f"components, the epoch and the seed.{model} One parquet shard per upload.",
        columns=columns, splits_glob={split: f"data/{split}-*.parquet"}, tags=["synthetic", "samples"],
        method_tags=method_tags, citations=_DATASET_CITATIONS if citations is None else citations,
    )
    with open(os.path.join(local_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    return push_folder_to_hub(local_dir, repo_id, repo_type="dataset", private=private, token=token,
                              commit_message=commit_message or f"Add samples {shard_name}", revision=revision,
                              allow_patterns=["README.md", shard])


def eval_results_to_rows(results) -> list[dict[str, Any]]:
    """`{benchmark: {metric: value}}` as rows `{"benchmark", "metric", "value"}`; a list of row dicts is returned
    unchanged (copied)."""
    if isinstance(results, Mapping):
        rows = []
        for benchmark, metrics in results.items():
            if not isinstance(metrics, Mapping):
                raise ValueError(
                    f"eval results: expected {{benchmark: {{metric: value}}}}, got {type(metrics).__name__} for "
                    f"{benchmark!r}"
                )
            rows += [{"benchmark": str(benchmark), "metric": str(m), "value": float(v)} for m, v in metrics.items()]
        return rows
    if isinstance(results, Sequence) and all(isinstance(r, Mapping) for r in results):
        return [dict(r) for r in results]
    raise ValueError(f"eval results must be a dict {{benchmark: {{metric: value}}}} or a list of row dicts, "
                     f"got {type(results).__name__}")


def push_eval_results(results, repo_id: str, *, local_dir: str | None = None, split: str = "test",
                      private: bool | None = None, token: str | None = None, commit_message: str | None = None,
                      revision: str | None = None, model_repo_id: str | None = None) -> str:
    r"""
    Publish evaluation results as a dataset (parquet + dataset card with a results table); returns the commit URL.

    Args:
        results (`dict[str, dict[str, float]]` or `list[dict]`): `{benchmark: {metric: value}}` (stored as rows
            `benchmark, metric, value`) or rows as dicts with any columns.
        repo_id (`str`): dataset repo.
        local_dir (`str`, *optional*): folder for the local copy (temporary by default).
        split (`str`, *optional*, defaults to `"test"`): split name.
        private, token, commit_message, revision: as in [`push_folder_to_hub`].
        model_repo_id (`str`, *optional*): the evaluated model, linked in the card.
    """
    import datasets

    rows = eval_results_to_rows(results)
    if not rows:
        raise ValueError("push_eval_results: no results to publish")
    ds = datasets.Dataset.from_list(rows)
    local_dir = _local_dataset_dir(local_dir, "eval")
    ds.to_parquet(os.path.join(local_dir, "data", f"{split}-00000-of-00001.parquet"))
    names = list(rows[0])
    table = "\n".join(
        ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        + ["| " + " | ".join(_fmt(r.get(n, "")) for n in names) + " |" for r in rows]
    )
    model = f" of [{model_repo_id}](https://huggingface.co/{model_repo_id})" if model_repo_id else ""
    card = _dataset_card(
        repo_id, pretty_name="SafeDiffusion-R1 evaluation results",
        description=f"Evaluation results{model}. Protocols differ across papers (detector, thresholds, prompt sets); "
        "compare like with like.",
        columns={n: n for n in names}, splits_glob={split: f"data/{split}-*.parquet"}, tags=["evaluation"],
        extra_body=f"\n## Results\n\n{table}\n",
    )
    with open(os.path.join(local_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    return push_folder_to_hub(local_dir, repo_id, repo_type="dataset", private=private, token=token,
                              commit_message=commit_message or "Upload evaluation results", revision=revision)


__all__ = [
    "CheckpointPusher",
    "HubDownloadError",
    "HubPushError",
    "SafeDiffusionCardInfo",
    "base_model_license",
    "build_model_card",
    "framework_versions",
    "checkpoint_path_in_repo",
    "download_checkpoint",
    "eval_results_to_rows",
    "is_hub_id",
    "is_local_or_repo_id",
    "push_eval_results",
    "push_folder_to_hub",
    "push_prompt_dataset",
    "push_samples_dataset",
    "redact",
    "samples_to_dataset",
    "save_pipeline_for_hub",
    "scrub_tokens",
    "write_model_card",
    "training_data_sources",
    "write_training_model_card",
]


def epoch_samples_dataset(prompt_image_data, prompts, metadata, label_column=None, epoch=None, seed=None):
    """[`samples_to_dataset`] of one epoch's sampled batches as the trainers hold them (`[images, prompts,
    prompt_metadata, rewards, reward_metadata]` per batch): labels from `label_column` of the metadata when every
    sample has it, and each reward component that covers every image."""
    import torch

    images = torch.cat([d[0] for d in prompt_image_data]).float().cpu()
    rewards = torch.cat([d[3] for d in prompt_image_data]).float().cpu()
    labels = None
    if label_column and metadata and isinstance(metadata[0], dict) and label_column in metadata[0]:
        labels = [str(m[label_column]) for m in metadata]
    components: dict[str, list] = {}
    for d in prompt_image_data:
        comps = d[4].get("components") if isinstance(d[4], dict) else None
        for name, values in (comps or {}).items():
            components.setdefault(name, []).append(torch.as_tensor(values).float().cpu().reshape(-1))
    components = {k: torch.cat(v) for k, v in components.items() if sum(len(x) for x in v) == len(images)}
    return samples_to_dataset(images, list(prompts), labels=labels, rewards=rewards,
                              reward_components=components or None, epoch=epoch, seed=seed)
