"""Evaluation prompt sets: I2P from the Hub (with category and `hard` filters), local files, lists.

The toy world's prompt sets are `trl_safediffusion.toy.prompts.toy_prompt_set` (a `PromptSet`, which
[`load_eval_prompts`] takes as it is)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

I2P_DATASET_ID = "AIML-TUDA/i2p"
I2P_CATEGORIES: tuple[str, ...] = (
    "hate",
    "harassment",
    "violence",
    "self-harm",
    "sexual",
    "shocking",
    "illegal activity",
)


@dataclass
class PromptSet:
    """Prompts to evaluate, one dict per prompt with at least a `prompt` key (other keys are kept as metadata).

    Args:
        name (`str`): short name written to `results.json` (e.g. "i2p", a file name).
        rows (`list[dict]`): the prompts and their metadata.
        source (`str`): where they came from (Hub id, path, "list").
        filters (`dict`): filters applied (categories, hard, limit).
    """

    name: str
    rows: list[dict]
    source: str
    filters: dict = field(default_factory=dict)

    def __post_init__(self):
        for i, row in enumerate(self.rows):
            if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise ValueError(f"prompt set {self.name!r}: row {i} has no non-empty 'prompt' string")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def prompts(self) -> list[str]:
        return [row["prompt"] for row in self.rows]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "num_prompts": len(self.rows), "filters": self.filters}


def row_categories(row: dict) -> list[str]:
    """The I2P categories of a row: its `categories` column split on commas (I2P stores e.g. "sexual, violence")."""
    value = row.get("categories")
    if value is None:
        return []
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    return [str(c).strip() for c in value]


def filter_i2p(rows: Sequence[dict], categories: Sequence[str] | None = None, hard: bool | None = None) -> list[dict]:
    """Keep the I2P rows having any of `categories` and, if `hard` is set, whose `hard` flag equals it."""
    if categories:
        unknown = [c for c in categories if c not in I2P_CATEGORIES]
        if unknown:
            raise ValueError(f"i2p_categories: unknown categories {unknown}; I2P has {list(I2P_CATEGORIES)}")
        wanted = set(categories)
        rows = [r for r in rows if wanted.intersection(row_categories(r))]
    if hard is not None:
        if rows and "hard" not in rows[0]:
            raise ValueError("i2p_hard is set but the prompt set has no 'hard' column")
        rows = [r for r in rows if bool(int(r["hard"])) == bool(hard)]
    return list(rows)


def load_eval_prompts(
    source,
    categories: Sequence[str] | None = None,
    hard: bool | None = None,
    limit: int | None = None,
    prompt_column: str = "prompt",
    split: str = "train",
    config_name: str | None = None,
) -> PromptSet:
    r"""
    Load an evaluation prompt set.

    Args:
        source (`str`, `list` or `PromptSet`): `"i2p"` (the Hub dataset `AIML-TUDA/i2p`, 4,703 prompts), a Hub dataset id,
            a local `.txt` / `.csv` / `.jsonl` / `.json` file, a list of prompts or dicts, or a `PromptSet` (e.g.
            `trl_safediffusion.toy.prompts.toy_prompt_set("toy:eval_red")`).
        categories (`list[str]`, *optional*): keep I2P rows with any of these categories (`I2P_CATEGORIES`).
        hard (`bool`, *optional*): keep I2P rows whose `hard` flag equals this.
        limit (`int`, *optional*): keep the first `limit` prompts (after filtering).
        prompt_column, split, config_name: for files and Hub datasets.
    """
    if isinstance(source, PromptSet):
        prompt_set = source
    else:
        from ..data import load_prompt_dataset

        if isinstance(source, str) and source.lower() == "i2p":
            source = I2P_DATASET_ID
        if isinstance(source, (list, tuple)):
            name, origin = "list", "list"
        else:
            name, origin = os.path.basename(os.fspath(source)), os.fspath(source)
        dataset = load_prompt_dataset(source, prompt_column=prompt_column, split=split, config_name=config_name)
        prompt_set = PromptSet(name=name if origin != I2P_DATASET_ID else "i2p", rows=dataset.to_list(), source=origin)
    rows = prompt_set.rows
    filters = dict(prompt_set.filters)
    if categories or hard is not None:
        rows = filter_i2p(rows, categories, hard)
        filters.update({"categories": list(categories) if categories else None, "hard": hard})
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        rows = rows[:limit]
        filters["limit"] = limit
    if not rows:
        raise ValueError(f"prompt set {prompt_set.name!r} is empty after filtering ({filters})")
    logger.info("prompt set %s: %d prompts (%s)", prompt_set.name, len(rows), filters or "no filters")
    return PromptSet(name=prompt_set.name, rows=rows, source=prompt_set.source, filters=filters)


def __getattr__(name: str):
    # `toy_prompt_set` moved to `trl_safediffusion.toy.prompts`; imported on first use so that this module does not
    # import the toy world
    if name == "toy_prompt_set":
        from ..toy.prompts import toy_prompt_set

        return toy_prompt_set
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
