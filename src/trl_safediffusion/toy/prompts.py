"""The toy world's evaluation prompt sets as `trl_safediffusion.evaluation.PromptSet`s (`--prompts toy:<set>`)."""

from __future__ import annotations

from ..evaluation.prompts import PromptSet
from .world import prompt_sets

TOY_PREFIX = "toy"


def toy_prompt_set(name: str = "eval") -> PromptSet:
    """A prompt set of the toy world: `"toy:<set>"` with a set of `trl_safediffusion.toy.world.prompt_sets()`, or
    `"toy"` / `"toy:eval"` for every `eval_*` set (each row gets a `set` column)."""
    sets = prompt_sets()
    key = name.split(":", 1)[1] if ":" in name else "eval"
    if key == "eval":
        rows = [{**row, "set": set_name} for set_name, rs in sets.items() if set_name.startswith("eval_") for row in rs]
    elif key in sets:
        rows = [{**row, "set": key} for row in sets[key]]
    else:
        raise ValueError(f"prompts: unknown toy prompt set {key!r}; expected 'eval' or one of {sorted(sets)}")
    return PromptSet(name=f"{TOY_PREFIX}:{key}", rows=rows, source="trl_safediffusion.toy.world.prompt_sets")
