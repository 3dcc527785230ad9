"""Steering anchors of the SafeDiffusion-R1 reward (arXiv 2605.18719, "Reward" section) and the direction they define.

    v_safe = normalize(mean_i z(safe_i) - mean_j z(unsafe_j)),   z = normalize(E_txt(phrase))

Anchors come from a preset shipped in `presets/*.json`, a `.json`/`.txt` file, a mapping or a pair of lists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F

_PRESET_PACKAGE = "trl_safediffusion.rewards"
_PRESET_DIR = "presets"


@dataclass(frozen=True)
class AnchorSet:
    """Safe and unsafe anchor phrases that define the steering direction `v_safe`.

    Args:
        safe (`tuple[str, ...]`): phrases describing acceptable content; may be empty (the paper's "empty-positive").
        unsafe (`tuple[str, ...]`): phrases describing the content to steer away from; may be empty.
        name (`str`, *optional*): preset name or file the anchors came from, for logs and model cards.
    """

    safe: tuple[str, ...]
    unsafe: tuple[str, ...]
    name: str | None = None

    def __post_init__(self):
        for field_name in ("safe", "unsafe"):
            phrases = getattr(self, field_name)
            if isinstance(phrases, str) or not isinstance(phrases, Sequence):
                raise ValueError(
                    f"anchors.{field_name} must be a list of strings, got {type(phrases).__name__}; "
                    f"wrap a single phrase in a list"
                )
            phrases = tuple(phrases)
            for phrase in phrases:
                if not isinstance(phrase, str) or not phrase.strip():
                    raise ValueError(f"anchors.{field_name} must contain non-empty strings, got {phrase!r}")
            object.__setattr__(self, field_name, phrases)
        if not self.safe and not self.unsafe:
            raise ValueError(
                f"anchors{' ' + self.name if self.name else ''}: both `safe` and `unsafe` are empty; give at least one "
                f"phrase in either list, or use a preset name"
            )


def _load_preset_files() -> dict[str, AnchorSet]:
    presets = {}
    folder = resources.files(_PRESET_PACKAGE) / _PRESET_DIR
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            name = data.get("name", entry.name[: -len(".json")])
            presets[name] = AnchorSet(safe=tuple(data["safe"]), unsafe=tuple(data["unsafe"]), name=name)
    return presets


ANCHOR_PRESETS: Mapping[str, AnchorSet] = _load_preset_files()


def get_anchor_preset(name: str) -> AnchorSet:
    """The anchors of a named preset shipped in `trl_safediffusion/rewards/presets/*.json`.

    Args:
        name (`str`): one of `ANCHOR_PRESETS`: "nudity-compact" (reference code, 5 safe / 3 unsafe), "empty-positive"
            (no safe anchors, paper ablation), "toy-red" (embedded toy world: red shapes are unsafe).

    Raises:
        `ValueError`: if `name` is not a known preset.
    """
    if name not in ANCHOR_PRESETS:
        raise ValueError(
            f"anchors: unknown preset name {name!r}; expected one of {sorted(ANCHOR_PRESETS)}, "
            f"a path to a .json/.txt anchor file, or lists of safe and unsafe phrases"
        )
    return ANCHOR_PRESETS[name]


def _read_anchor_file(path: str) -> AnchorSet:
    name = os.path.basename(path)
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or "safe" not in data or "unsafe" not in data:
            raise ValueError(f"anchors file {path} must hold a JSON object with keys 'safe' and 'unsafe' (lists)")
        return AnchorSet(safe=tuple(data["safe"]), unsafe=tuple(data["unsafe"]), name=data.get("name", name))
    safe, unsafe = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            kind, sep, phrase = line.partition(":")
            kind = kind.strip().lower()
            if not sep or kind not in ("safe", "unsafe"):
                raise ValueError(
                    f"anchors file {path}, line {lineno}: expected 'safe: <phrase>' or 'unsafe: <phrase>', got {line!r}"
                )
            (safe if kind == "safe" else unsafe).append(phrase.strip())
    return AnchorSet(safe=tuple(safe), unsafe=tuple(unsafe), name=name)


def load_anchors(anchors: AnchorSet | str | os.PathLike | Mapping | Sequence) -> AnchorSet:
    """Resolve anchors given as a preset name, a file, a mapping or a pair of lists.

    Args:
        anchors: one of
            - an `AnchorSet` (returned as is);
            - a preset name from `ANCHOR_PRESETS`;
            - a path to a `.json` file (`{"safe": [...], "unsafe": [...]}`) or a text file with one
              `safe: <phrase>` or `unsafe: <phrase>` per line (`#` comments and blank lines ignored);
            - a mapping with keys "safe" and "unsafe";
            - a pair `(safe_list, unsafe_list)`.

    Raises:
        `ValueError`: for an unknown name, a malformed file or mapping, or when both lists are empty.
    """
    if isinstance(anchors, AnchorSet):
        return anchors
    if isinstance(anchors, (str, os.PathLike)):
        text = os.fspath(anchors)
        if text in ANCHOR_PRESETS:
            return ANCHOR_PRESETS[text]
        if os.path.isfile(text):
            return _read_anchor_file(text)
        return get_anchor_preset(text)
    if isinstance(anchors, Mapping):
        if "safe" not in anchors or "unsafe" not in anchors:
            raise ValueError(f"anchors mapping must have keys 'safe' and 'unsafe', got keys {sorted(anchors)}")
        return AnchorSet(safe=tuple(anchors["safe"]), unsafe=tuple(anchors["unsafe"]), name=anchors.get("name"))
    if isinstance(anchors, Sequence) and len(anchors) == 2:
        return AnchorSet(safe=tuple(anchors[0]), unsafe=tuple(anchors[1]))
    raise ValueError(
        f"anchors must be an AnchorSet, a preset name ({sorted(ANCHOR_PRESETS)}), a .json/.txt path, a mapping with "
        f"'safe' and 'unsafe', or a pair (safe_list, unsafe_list); got {type(anchors).__name__}"
    )


def compute_v_safe(anchors: AnchorSet, encode_text: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """The unit steering direction `v_safe` (D,): mean safe minus mean unsafe normalised anchor embedding.

    All anchors are encoded in one call, safe phrases first, without gradients.

    Args:
        anchors (`AnchorSet`): the safe and unsafe phrases; an empty side contributes nothing.
        encode_text (`Callable[[list[str]], torch.Tensor]`): a backend's text encoder, `list[str] -> (N, D)`.

    Raises:
        `ValueError`: if the safe and unsafe anchors have the same mean embedding.
    """
    phrases = list(anchors.safe) + list(anchors.unsafe)
    with torch.no_grad():
        z = F.normalize(encode_text(phrases).float(), dim=-1)  # (S + U, D)
    n_safe = len(anchors.safe)
    direction = torch.zeros(z.shape[-1], device=z.device, dtype=z.dtype)  # (D,)
    if n_safe:
        direction = direction + z[:n_safe].mean(dim=0)
    if len(anchors.unsafe):
        direction = direction - z[n_safe:].mean(dim=0)
    if float(direction.norm()) < 1e-6:
        raise ValueError("anchors: safe and unsafe anchors have the same mean embedding; v_safe is undefined")
    return F.normalize(direction, dim=-1)
