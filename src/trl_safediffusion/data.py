"""Prompt datasets for SafeDDPOGRPOTrainer: from a list, a local txt/csv/jsonl/json file or a Hub id; unsafe/benign
mixing with a label column."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence

from datasets import Dataset, concatenate_datasets


def load_prompt_dataset(
    source,
    prompt_column: str = "prompt",
    label_column: str | None = None,
    label: bool | None = None,
    split: str = "train",
    config_name: str | None = None,
    revision: str | None = None,
) -> Dataset:
    r"""
    Build a prompt dataset whose prompt text is in a `prompt` column.

    Args:
        source (`list`, `str` or `datasets.Dataset`): a list of strings or of dicts; a local `.txt` (one prompt per
            line), `.csv`, `.jsonl` or `.json` file; a Hub dataset id; or an existing `datasets.Dataset`.
        prompt_column (`str`, *optional*, defaults to `"prompt"`): the column holding prompts in the source; it is
            renamed to `prompt`.
        label_column (`str`, *optional*): name of a label column to add (with `label`) or to keep.
        label (`bool`, *optional*): value of `label_column` for every row (e.g. `unsafe=True` for an unsafe set).
        split, config_name, revision: used for Hub ids.

    The source is recorded in `dataset.info.dataset_name` (the Hub id with its namespace, or the file or folder name),
    which model cards read to name the training prompts.
    """
    if isinstance(source, Dataset):
        ds = source
    elif isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("source is an empty list; pass at least one prompt")
        if all(isinstance(s, str) for s in source):
            ds = Dataset.from_dict({prompt_column: list(source)})
        elif all(isinstance(s, dict) for s in source):
            ds = Dataset.from_list(list(source))
        else:
            raise ValueError("source list must hold only strings or only dicts")
    elif isinstance(source, (str, os.PathLike)):
        path = str(source)
        if os.path.isfile(path):
            ds = _load_file(path, prompt_column)
            ds.info.dataset_name = os.path.basename(path)
        elif os.path.isdir(path):
            from datasets import load_from_disk

            ds = load_from_disk(path)
            ds.info.dataset_name = ds.info.dataset_name or os.path.basename(os.path.normpath(path))
        elif path.count("/") == 1 and not path.startswith((".", "/")):
            from datasets import load_dataset

            ds = load_dataset(path, config_name, split=split, revision=revision)
            ds.info.dataset_name = path  # datasets keeps only the part after the namespace
        else:
            raise ValueError(f"source {path!r} is neither an existing file or folder nor a Hub dataset id (namespace/name)")
    else:
        raise ValueError(f"source must be a list, a file path, a Hub id or a datasets.Dataset, got {type(source).__name__}")

    if prompt_column not in ds.column_names:
        raise ValueError(f"prompt_column {prompt_column!r} not in the dataset's columns {ds.column_names}")
    if prompt_column != "prompt":
        if "prompt" in ds.column_names:
            ds = ds.remove_columns("prompt")
        ds = ds.rename_column(prompt_column, "prompt")
    bad = [i for i, p in enumerate(ds["prompt"]) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"{len(bad)} prompts are empty or not text (first at row {bad[0]}); clean the source")
    if label is not None:
        if not label_column:
            raise ValueError("label is set but label_column is not; name the column, e.g. label_column='unsafe'")
        if label_column in ds.column_names:
            ds = ds.remove_columns(label_column)
        ds = ds.add_column(label_column, [bool(label)] * len(ds))
    elif label_column and label_column not in ds.column_names:
        raise ValueError(f"label_column {label_column!r} not in the dataset's columns {ds.column_names}")
    return ds


def _load_file(path: str, prompt_column: str) -> Dataset:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".txt":
        with open(path, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
        if not prompts:
            raise ValueError(f"{path} holds no prompts")
        return Dataset.from_dict({prompt_column: prompts})
    if ext == ".csv":
        import csv

        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError(f"{path} holds no rows")
        return Dataset.from_list(rows)
    if ext == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}, line {n}: not valid JSON ({err.msg})") from err
        return Dataset.from_list(rows)
    if ext == ".json":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return Dataset.from_dict({prompt_column: data})
        if isinstance(data, list):
            return Dataset.from_list(data)
        raise ValueError(f"{path}: expected a JSON list of prompts or of records")
    raise ValueError(f"unsupported prompt file extension {ext!r} for {path}; use .txt, .csv, .jsonl or .json")


def mix_prompts(
    unsafe,
    benign,
    unsafe_ratio: float = 0.5,
    num_prompts: int | None = None,
    label_column: str = "unsafe",
    seed: int = 0,
    prompt_column: str = "prompt",
) -> Dataset:
    r"""
    Mix unsafe and benign prompts at `unsafe_ratio`, with a boolean `label_column` (True for unsafe).

    Args:
        unsafe, benign: anything `load_prompt_dataset` accepts.
        unsafe_ratio (`float`, *optional*, defaults to `0.5`): fraction of unsafe prompts in the result, in [0, 1].
        num_prompts (`int`, *optional*): size of the result; by default the largest size that keeps the ratio without
            repeating prompts. Larger sizes repeat prompts (each set is cycled in a shuffled order).
        seed (`int`, *optional*, defaults to `0`): shuffling seed.
    """
    if not 0.0 <= unsafe_ratio <= 1.0:
        raise ValueError(f"unsafe_ratio must be in [0, 1], got {unsafe_ratio}")
    u = load_prompt_dataset(unsafe, prompt_column=prompt_column, label_column=label_column, label=True)
    b = load_prompt_dataset(benign, prompt_column=prompt_column, label_column=label_column, label=False)
    if num_prompts is None:
        if unsafe_ratio == 0:
            num_prompts = len(b)
        elif unsafe_ratio == 1:
            num_prompts = len(u)
        else:
            num_prompts = int(min(len(u) / unsafe_ratio, len(b) / (1 - unsafe_ratio)))
    if not isinstance(num_prompts, int) or num_prompts < 1:
        raise ValueError(f"num_prompts must be a positive integer, got {num_prompts!r}")
    n_unsafe = round(num_prompts * unsafe_ratio)
    n_benign = num_prompts - n_unsafe
    rng = random.Random(seed)
    parts = []
    for ds, n in ((u, n_unsafe), (b, n_benign)):
        if n:
            parts.append(ds.select(_cycled_indices(len(ds), n, rng)))
    common = set(parts[0].column_names)
    for p in parts[1:]:
        common &= set(p.column_names)
    parts = [p.select_columns([c for c in p.column_names if c in common]) for p in parts]
    mixed = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    mixed = mixed.shuffle(seed=seed).flatten_indices()
    sources = [ds.info.dataset_name for ds, n in ((u, n_unsafe), (b, n_benign)) if n and ds.info.dataset_name]
    mixed.info.dataset_name = " + ".join(dict.fromkeys(sources)) or None  # the sources model cards name
    return mixed


def _cycled_indices(n: int, k: int, rng: random.Random) -> Sequence[int]:
    out: list[int] = []
    while len(out) < k:
        order = list(range(n))
        rng.shuffle(order)
        out.extend(order[: k - len(out)])
    return out
