"""Markdown pieces shared by the model and dataset cards: values, two-column tables, slugs and BibTeX blocks."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any


def _bibtex_block(entries: Sequence[str]) -> str:
    return "```bibtex\n" + "\n\n".join(e.strip() for e in entries) + "\n```"


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
