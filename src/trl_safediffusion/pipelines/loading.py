"""Choosing a model family's adapter from a diffusers pipeline ([`load_ddpo_pipeline`]).

The adapter is picked from the diffusers pipeline class: the class of a built pipeline object, or the `_class_name` in
the `model_index.json` of a local folder or a Hub repo. Adapters are imported lazily by module and class name, so a
family whose module is not installed only fails when it is asked for.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from dataclasses import dataclass

from .base import DDPOStableDiffusionPipeline

_ARGUMENT = "name_or_pipeline"


@dataclass(frozen=True)
class ModelFamily:
    r"""
    A model family: the diffusers pipeline class it trains and the adapter that wraps it.

    Args:
        name (`str`): display name, e.g. `"Stable Diffusion 3"`.
        pipeline_class (`str`): the stock diffusers pipeline class, e.g. `"StableDiffusion3Pipeline"` (what
            `model_index.json` names in `_class_name`, and what model cards load the trained model with).
        adapter (`str`): the adapter's module and class, `"package.module.ClassName"`.
        tags (`tuple[str, ...]`): Hub tags of the family, added to model cards.
    """

    name: str
    pipeline_class: str
    adapter: str
    tags: tuple[str, ...]

    def adapter_class(self) -> type:
        """The adapter class, imported now; `ValueError` naming the module when it is not installed."""
        module_name, class_name = self.adapter.rsplit(".", 1)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is None or not module_name.startswith(err.name):
                raise  # a dependency of the module is missing: let its own error say which
            raise ValueError(f"the {self.name} family ({self.pipeline_class}) needs its adapter module {module_name}, "
                             "which is not in this installation; update trl-safediffusion") from None
        return getattr(module, class_name)

    def accepted_kwargs(self) -> set[str] | None:
        """The keyword arguments the adapter's constructor takes (`None`: any, it has `**kwargs`)."""
        params = list(inspect.signature(self.adapter_class().__init__).parameters.values())[2:]  # self, the source
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                     inspect.Parameter.POSITIONAL_OR_KEYWORD)}

    def check_kwargs(self, kwargs) -> None:
        """`ValueError` naming the first of `kwargs` the adapter does not take, and the ones it does."""
        accepted = self.accepted_kwargs()
        if accepted is None:
            return
        for name in kwargs:
            if name not in accepted:
                raise ValueError(f"{name}: the {self.name} family's adapter ({self.adapter.rsplit('.', 1)[1]}) does not "
                                 f"take this option; leave it unset (it takes {', '.join(sorted(accepted))})")

    def load(self, name_or_pipeline, **kwargs) -> DDPOStableDiffusionPipeline:
        """The adapter built over `name_or_pipeline` with `kwargs` (checked first, see [`check_kwargs`])."""
        self.check_kwargs(kwargs)
        if isinstance(name_or_pipeline, (str, os.PathLike)):
            name_or_pipeline = self._with_absent_components(name_or_pipeline, kwargs)
        pipeline = self.adapter_class()(name_or_pipeline, **kwargs)
        # the card metadata of an adapter class that does not declare it
        if getattr(pipeline, "diffusers_pipeline_class_name", None) is None:
            pipeline.diffusers_pipeline_class_name = self.pipeline_class
        if not getattr(pipeline, "family_tags", None):
            pipeline.family_tags = list(self.tags)
        return pipeline

    def _with_absent_components(self, source, kwargs: dict):
        """`source`, or the diffusers pipeline loaded from it when its model_index.json holds components as null
        (SD3 saved without T5): diffusers' `from_pretrained` wants those passed as None. Pops `torch_dtype` then."""
        revision = kwargs.get("pretrained_model_revision", "main")
        absent = _absent_components(model_index(source, revision))
        if not absent:
            return source
        import diffusers

        loading = {"revision": revision}
        if kwargs.get("torch_dtype") is not None:
            loading["torch_dtype"] = kwargs.pop("torch_dtype")
        pipeline_class = getattr(diffusers, self.pipeline_class)
        return pipeline_class.from_pretrained(os.path.expanduser(str(source)), **loading, **dict.fromkeys(absent))


_PIPELINES = "trl_safediffusion.pipelines"

MODEL_FAMILIES = (
    ModelFamily("Stable Diffusion", "StableDiffusionPipeline",
                f"{_PIPELINES}.stable_diffusion.DefaultDDPOStableDiffusionPipeline", ("stable-diffusion",)),
    ModelFamily("Stable Diffusion XL", "StableDiffusionXLPipeline",
                f"{_PIPELINES}.stable_diffusion_xl.DefaultDDPOStableDiffusionXLPipeline", ("stable-diffusion-xl",)),
    ModelFamily("Stable Diffusion 3", "StableDiffusion3Pipeline",
                f"{_PIPELINES}.stable_diffusion_3.DefaultDDPOStableDiffusion3Pipeline", ("stable-diffusion-3",)),
    ModelFamily("FLUX", "FluxPipeline", f"{_PIPELINES}.flux.DefaultDDPOFluxPipeline", ("flux",)),
)
_BY_CLASS = {family.pipeline_class: family for family in MODEL_FAMILIES}


def _supported() -> str:
    return ", ".join(_BY_CLASS)


def family_for_class(class_name: str, argument: str = _ARGUMENT) -> ModelFamily:
    """The family of the diffusers pipeline class `class_name`; `ValueError` naming it and the supported classes."""
    family = _BY_CLASS.get(class_name)
    if family is None:
        raise ValueError(f"{argument}: {class_name} is not a supported pipeline class (supported: {_supported()})")
    return family


def family_of(pipeline) -> ModelFamily | None:
    """The family of a built diffusers pipeline or library adapter, or `None` when it is none of `MODEL_FAMILIES`."""
    if isinstance(pipeline, DDPOStableDiffusionPipeline):
        declared = getattr(pipeline, "diffusers_pipeline_class_name", None)
        if declared in _BY_CLASS:
            return _BY_CLASS[declared]
        adapters = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(pipeline).__mro__}
        return next((f for f in MODEL_FAMILIES if f.adapter in adapters), None)
    return next((_BY_CLASS[cls.__name__] for cls in type(pipeline).__mro__ if cls.__name__ in _BY_CLASS), None)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _hub_model_index(repo_id: str, revision: str | None, argument: str) -> dict:
    from huggingface_hub import constants, hf_hub_download

    try:
        path = hf_hub_download(repo_id, "model_index.json", revision=revision)
    except (OSError, ValueError) as err:  # not found, offline and not cached, no network, a malformed id
        hint = ("; HF_HUB_OFFLINE is set: pass a local folder, or download the model first (`hf download "
                f"{repo_id}`)" if constants.HF_HUB_OFFLINE else "; check the id, the revision and `hf auth login`")
        raise ValueError(f"{argument}: cannot read model_index.json of {repo_id!r} from the Hub "
                         f"({type(err).__name__}: {_one_line(err)[:300]}){hint}") from None
    return _read_index(path, repo_id, argument)


def _read_index(index_path: str, source: str, argument: str) -> dict:
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{argument}: cannot read {index_path} ({_one_line(err)})") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise ValueError(f"{argument}: the model_index.json of {source} names no _class_name; it is not a saved "
                         "diffusers pipeline")
    return index


def model_index(name_or_path, revision: str | None = "main", argument: str = _ARGUMENT) -> dict:
    r"""
    The `model_index.json` of a diffusers pipeline folder or Hub repo, without loading any weights.

    Args:
        name_or_path (`str` or `os.PathLike`): a local pipeline folder, or a Hub id (its `model_index.json` is
            downloaded, or read from the cache offline).
        revision (`str`, *optional*, defaults to `"main"`): Hub revision.
        argument (`str`, *optional*): the name errors give the source (the command line passes its field's name).
    """
    source = os.path.expanduser(str(name_or_path))
    if os.path.isdir(source):
        index = os.path.join(source, "model_index.json")
        if not os.path.isfile(index):
            raise ValueError(f"{argument}: the folder {source} has no model_index.json; pass a diffusers pipeline "
                             "folder (saved with save_pretrained) or a Hub id")
        return _read_index(index, source, argument)
    if os.path.exists(source):
        raise ValueError(f"{argument}: {source} is a file; pass a diffusers pipeline folder (with model_index.json) "
                         "or a Hub id")
    return _hub_model_index(str(name_or_path), revision, argument)


def pipeline_class_name(name_or_pipeline, revision: str | None = "main", argument: str = _ARGUMENT) -> str:
    """The diffusers pipeline class of `name_or_pipeline`: a built pipeline's class, or the `_class_name` of the
    [`model_index`] of a folder or Hub id."""
    if isinstance(name_or_pipeline, (str, os.PathLike)):
        return model_index(name_or_pipeline, revision, argument)["_class_name"]
    names = [cls.__name__ for cls in type(name_or_pipeline).__mro__]
    known = next((n for n in names if n in _BY_CLASS), None)
    if known is not None:
        return known
    if "DiffusionPipeline" in names:
        return type(name_or_pipeline).__name__
    raise ValueError(f"{argument} must be a Hub id, a local folder or a diffusers pipeline ({_supported()}), got "
                     f"{type(name_or_pipeline).__name__}")


def _absent_components(index: dict) -> list[str]:
    """Components a saved pipeline holds as `[null, null]` (e.g. SD3 saved without its T5 encoder)."""
    return sorted(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[:1] == [None])


def model_family(name_or_pipeline, revision: str | None = "main", argument: str = _ARGUMENT) -> ModelFamily:
    """The [`ModelFamily`] of `name_or_pipeline` (see [`pipeline_class_name`]); `ValueError` for an unsupported
    pipeline class, naming it and the supported ones."""
    return family_for_class(pipeline_class_name(name_or_pipeline, revision, argument), argument)


def load_ddpo_pipeline(name_or_pipeline, **kwargs) -> DDPOStableDiffusionPipeline:
    r"""
    The library pipeline of any supported model family, the adapter picked from the diffusers pipeline class:

    | diffusers pipeline | adapter |
    |---|---|
    | `StableDiffusionPipeline` (SD 1.x / 2.x) | `DefaultDDPOStableDiffusionPipeline` |
    | `StableDiffusionXLPipeline` | `DefaultDDPOStableDiffusionXLPipeline` |
    | `StableDiffusion3Pipeline` (SD3, SD3.5) | `DefaultDDPOStableDiffusion3Pipeline` |
    | `FluxPipeline` | `DefaultDDPOFluxPipeline` |

    Args:
        name_or_pipeline (`str`, `os.PathLike`, a diffusers pipeline or a library pipeline): a Hub id (the class is
            read from its `model_index.json`), a local folder (likewise), a built diffusers pipeline (by its class),
            or an already-wrapped library pipeline, returned as is.
        kwargs: the adapter's keyword arguments (`pretrained_model_revision`, `use_lora`, `lora_rank`, `lora_alpha`,
            `torch_dtype`, `sample_height`, ...); one the adapter does not take is a `ValueError` naming it.

    Example:

    ```python
    from trl_safediffusion.pipelines import load_ddpo_pipeline

    pipeline = load_ddpo_pipeline("stabilityai/stable-diffusion-3.5-medium", use_lora=True, lora_rank=16,
                                  sample_height=512, sample_width=512)
    ```
    """
    if isinstance(name_or_pipeline, DDPOStableDiffusionPipeline):
        if kwargs:
            raise ValueError(f"{_ARGUMENT} is already a {type(name_or_pipeline).__name__}; it is returned as is, so "
                             f"{', '.join(sorted(kwargs))} cannot be applied: pass the diffusers pipeline or its name")
        return name_or_pipeline
    family = model_family(name_or_pipeline, revision=kwargs.get("pretrained_model_revision", "main"))
    return family.load(name_or_pipeline, **kwargs)


__all__ = [
    "MODEL_FAMILIES",
    "ModelFamily",
    "family_for_class",
    "family_of",
    "load_ddpo_pipeline",
    "model_family",
    "model_index",
    "pipeline_class_name",
]
