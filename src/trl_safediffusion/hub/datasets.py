"""Hub datasets: the prompts a run trained on ([`push_prompt_dataset`]), sampled images with their rewards
([`samples_to_dataset`], [`push_samples_dataset`]) and evaluation results ([`push_eval_results`]), each as parquet
shards with a dataset card, written locally first and then uploaded with [`push_folder_to_hub`]."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from ._markdown import _bibtex_block, _fmt, _slug, _table
from .cards import DDPO_CITATION, GRPO_CITATION, LIBRARY_TAGS, SAFEDIFFUSION_R1_CITATION, SAFEDIFFUSION_R1_TAGS
from .upload import push_folder_to_hub

logger = logging.getLogger(__name__)

# BibTeX entries of a dataset card unless the caller names its own.
_DATASET_CITATIONS = [SAFEDIFFUSION_R1_CITATION, DDPO_CITATION, GRPO_CITATION]


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
    "eval_results_to_rows",
    "push_eval_results",
    "push_prompt_dataset",
    "push_samples_dataset",
    "samples_to_dataset",
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
