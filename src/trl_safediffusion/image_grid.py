"""Captioned image grids (PIL), shared by the evaluation report and the training image hook."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np


def _to_uint8_hwc(images) -> np.ndarray:
    arr = images.detach().float().clamp(0, 1).cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.rint(np.clip(arr, 0, 1) * 255.0).astype(np.uint8)
    return np.transpose(arr, (0, 2, 3, 1))


def captioned_grid(images, captions: Sequence[str] | None = None, ncols: int | None = None, min_cell: int = 128,
                   caption_lines: int = 3, title: str | Sequence[str] | None = None):
    """A grid of images (B, 3, H, W) in [0, 1] with a caption under each, as a PIL image.

    Small images are upscaled (nearest) to at least `min_cell` pixels wide so captions stay legible. `title` (a
    string or one string per paragraph) is written above the grid, wrapped to its width: e.g. a legend of what the
    captions say.
    """
    from PIL import Image, ImageDraw, ImageFont

    arr = _to_uint8_hwc(images)
    n = len(arr)
    if n == 0:
        raise ValueError("captioned_grid needs at least one image")
    if captions is not None and len(captions) != n:
        raise ValueError(f"got {n} images but {len(captions)} captions")
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    h, w = arr.shape[1:3]
    zoom = max(1, math.ceil(min_cell / w))
    cw, ch = w * zoom, h * zoom
    font = ImageFont.load_default()
    chars = max(8, cw // 6)
    text_h = 12 * caption_lines + 4 if captions is not None else 0
    paragraphs = [title] if isinstance(title, str) else list(title or [])
    title_lines = [line for p in paragraphs for line in textwrap.wrap(str(p), max(8, ncols * cw // 6))]
    top = 12 * len(title_lines) + 6 if title_lines else 0
    grid = Image.new("RGB", (ncols * cw, top + nrows * (ch + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, line in enumerate(title_lines):
        draw.text((2, 3 + 12 * j), line, fill=(0, 0, 0), font=font)
    for idx in range(n):
        r, c = divmod(idx, ncols)
        x, y = c * cw, top + r * (ch + text_h)
        grid.paste(Image.fromarray(arr[idx]).resize((cw, ch), Image.NEAREST), (x, y))
        if captions is not None:
            lines = textwrap.wrap(str(captions[idx]), chars)[:caption_lines]
            for j, line in enumerate(lines):
                draw.text((x + 2, y + ch + 2 + 12 * j), line, fill=(0, 0, 0), font=font)
    return grid
