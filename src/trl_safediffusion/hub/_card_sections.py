"""The model card sections that render what the caller measured: the "Reward" section (the reward's description,
e.g. `CLIPSteeringReward.describe()`, as a table, with the steering formula and the anchor phrases when the reward is
or contains a CLIP steering reward) and the "Evaluation" section with its model-index entries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._markdown import _fmt, _slug, _table

# Hub dataset ids of known evaluation suites, used for model-index entries (see docs/hub.md).
KNOWN_EVAL_DATASETS = {"i2p": "AIML-TUDA/i2p"}

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


_STEERING_KEYS = {"alpha", "anchors", "safe_anchors", "unsafe_anchors"}
# Limitations a card lists for a model trained against a CLIP steering reward.
_STEERING_LIMITATIONS = (
    "Safety is measured with automatic detectors (e.g. NudeNet, Q16) whose protocols differ across papers; numbers "
    "are only comparable under the same protocol, prompt set and thresholds.",
    "The reward steers toward CLIP's notion of the anchor phrases; harm types far from the anchors may be reduced "
    "less, and adversarial prompts can still produce unsafe images.",
)


def _describes_steering(reward: Mapping[str, Any]) -> bool:
    return reward.get("type") == "CLIPSteeringReward" or bool(_STEERING_KEYS & set(reward))


def _is_steering_reward(reward: Mapping[str, Any]) -> bool:
    """Whether the reward description is, or has a component that is, a CLIP steering reward."""
    return _describes_steering(reward) or any(
        isinstance(c, Mapping) and _is_steering_reward(c) for c in reward.get("components") or []
    )


def _steering_part(reward: Mapping[str, Any]) -> Mapping[str, Any]:
    """The steering reward's own description (the reward itself, or its component in a combined reward)."""
    if _describes_steering(reward):
        return reward
    return next(c for c in reward.get("components") or [] if isinstance(c, Mapping) and _is_steering_reward(c))


def _reward_section(reward: Mapping[str, Any]) -> str:
    """The body of the card's "Reward" section."""
    if _is_steering_reward(reward):
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


_NO_EVALUATION = "No evaluation results were recorded for this checkpoint."


def _evaluation_section(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The body of the card's "Evaluation" section: one row per benchmark, one column per metric."""
    if not results:
        return _NO_EVALUATION
    metrics = sorted({m for per in results.values() for m in per})
    lines = ["| Benchmark | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    lines += [f"| {_fmt(b)} | " + " | ".join(_fmt(per.get(m, "")) for m in metrics) + " |" for b, per in results.items()]
    return "\n".join(lines)


def _eval_results_entries(results: Mapping[str, Mapping[str, Any]], datasets: Mapping[str, str]) -> list:
    """The model-index entries (`huggingface_hub.EvalResult`) of `{benchmark: {metric: value}}`, non-finite values
    left out; `datasets` gives a benchmark's Hub dataset id (known suites such as I2P are filled in)."""
    from huggingface_hub import EvalResult

    entries = []
    for benchmark, metrics in results.items():
        dataset_type = datasets.get(benchmark) or KNOWN_EVAL_DATASETS.get(_slug(benchmark)) or _slug(benchmark)
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
