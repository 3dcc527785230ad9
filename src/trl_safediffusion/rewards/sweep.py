"""Reward versus steering strength alpha, per prompt label (the paper's alpha-sweep figure)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from .clip_steering import CLIPSteeringReward, validate_reward_inputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepRow:
    """Reward statistics of the images of one label at one alpha."""

    alpha: float
    label: str
    mean: float
    std: float
    n: int


@dataclass
class SweepResult:
    """Rows of a steering sweep and the path of its plot (if written).

    Args:
        rows (`list[SweepRow]`): one row per (alpha, label), alphas ascending, labels in first-seen order.
        png_path (`str`, *optional*): where the plot was saved.
        title (`str`, *optional*): the plot's title (steering mode and anchors), when a plot was written.
    """

    rows: list[SweepRow]
    png_path: str | None = None
    title: str | None = None

    def to_dicts(self) -> list[dict]:
        """Rows as a list of dicts with keys alpha, label, mean, std, n."""
        return [asdict(row) for row in self.rows]

    def series(self, label: str) -> tuple[list[float], list[float], list[float]]:
        """(alphas, means, stds) of one label."""
        rows = [r for r in self.rows if r.label == label]
        return [r.alpha for r in rows], [r.mean for r in rows], [r.std for r in rows]


def steering_sweep(
    reward_or_backend,
    images: torch.Tensor,
    prompts: Sequence[str],
    labels: Sequence[str],
    alphas: Sequence[float] | torch.Tensor | None = None,
    out_png: str | os.PathLike | None = None,
    **reward_kwargs,
) -> SweepResult:
    """Mean and std of the steering reward per label over a grid of alphas, with one encode for all alphas.

    Args:
        reward_or_backend (`CLIPSteeringReward` or a backend): the reward to sweep (its anchors, mode and prompt
            steering rule are kept; only alpha varies), or a backend to build one from with `reward_kwargs`.
        images (`torch.Tensor`): float (B, 3, H, W) in [0, 1].
        prompts (`list[str]`): one prompt per image.
        labels (`list[str]`): one label per image, e.g. "safe" / "unsafe".
        alphas (`list[float]`, *optional*, defaults to `torch.linspace(0, 2, 21)`): steering strengths.
        out_png (`str` or path, *optional*): save a plot of mean reward (+- std) versus alpha per label there.
        **reward_kwargs: `CLIPSteeringReward` arguments when a backend is given.

    Returns:
        `SweepResult`: rows (alpha, label, mean, std, n) and the PNG path.
    """
    if isinstance(reward_or_backend, CLIPSteeringReward):
        if reward_kwargs:
            raise ValueError(f"reward_kwargs {sorted(reward_kwargs)} only apply when a backend is given, not a reward")
        reward = reward_or_backend
    else:
        reward = CLIPSteeringReward(reward_or_backend, **reward_kwargs)
    validate_reward_inputs(images, prompts)
    if isinstance(labels, str) or len(labels) != len(prompts):
        raise ValueError(f"labels must be a list with one label per prompt ({len(prompts)}), got {labels!r}")
    if alphas is None:
        alphas = torch.linspace(0.0, 2.0, 21, dtype=torch.float64)
    alphas = [round(float(a), 10) for a in alphas]
    if not alphas:
        raise ValueError("alphas must hold at least one value")

    with torch.no_grad():
        z_x = reward.encode_images(images)  # (B, D)
        z_p = reward.encode_prompts(prompts).to(z_x.device)  # (B, D)
    label_order = list(dict.fromkeys(labels))
    masks = {label: torch.tensor([lab == label for lab in labels], device=z_x.device) for label in label_order}
    rows = []
    for alpha in sorted(alphas):
        values, _ = reward.rewards_from_embeddings(z_x, z_p, alpha=alpha)  # (B,)
        for label in label_order:
            sel = values[masks[label]].double()
            std = float(sel.std(unbiased=False)) if sel.numel() > 1 else 0.0
            rows.append(SweepRow(alpha=alpha, label=str(label), mean=float(sel.mean()), std=std, n=int(sel.numel())))
    result = SweepResult(rows=rows)
    if out_png is not None:
        result.title = sweep_title(reward)
        result.png_path = _plot(result, label_order, os.fspath(out_png), result.title)
    return result


def _phrases(phrases: Sequence[str], max_chars: int) -> str:
    text = ", ".join(f'"{p}"' for p in phrases) if phrases else "none"
    return text if len(text) <= max_chars else text[: max_chars - 3].rstrip(", ") + "..."


def sweep_title(reward: CLIPSteeringReward, max_chars: int = 70) -> str:
    """The title of the sweep plot: the steering mode and the anchors, by preset or file name when they have one,
    else by their phrases (each list shortened to `max_chars`)."""
    anchors = reward.anchors
    first = f"CLIP steering reward vs alpha ({reward.mode}"
    if anchors.name:
        return f"{first}, anchors {anchors.name})"
    return (f"{first})\nsafe anchors: {_phrases(anchors.safe, max_chars)}\n"
            f"unsafe anchors: {_phrases(anchors.unsafe, max_chars)}")


def _plot(result: SweepResult, labels: list[str], path: str, title: str) -> str:
    from matplotlib.figure import Figure  # a bare Figure renders with Agg; no pyplot, no global backend change

    fig = Figure(figsize=(5.0, 3.5 + 0.25 * title.count("\n")), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    for label in labels:
        xs, means, stds = result.series(label)
        lower = [m - s for m, s in zip(means, stds)]
        upper = [m + s for m, s in zip(means, stds)]
        ax.plot(xs, means, marker="o", markersize=3, label=str(label))
        ax.fill_between(xs, lower, upper, alpha=0.2)
    ax.set_xlabel("alpha (steering strength)")
    ax.set_ylabel("steering reward")
    ax.set_title(title, fontsize=9 if "\n" not in title else 7)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(path)
    logger.info("Saved steering sweep plot to %s", path)
    return path
