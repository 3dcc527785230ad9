"""Default `image_samples_hook` for the DDPO/GRPO trainers: a captioned grid of samples with their rewards, logged to
the accelerate tracker (tensorboard, wandb, ...) and optionally saved as PNG."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

logger = logging.getLogger(__name__)


class ImageGridHook:
    r"""
    Log a grid of the epoch's first samples, each captioned with its prompt and reward.

    Use as `SafeDDPOGRPOTrainer(..., image_samples_hook=ImageGridHook())`. The hook receives
    `prompt_image_data = [[images (B, 3, H, W) in [0, 1], prompts, prompt_metadata, rewards (B,), reward_metadata], ...]`
    (one entry per sampling batch), the global step and the tracker.

    Args:
        max_images (`int`, *optional*, defaults to `16`): images in the grid.
        every_n_calls (`int`, *optional*, defaults to `1`): log on every n-th call (the trainer calls once per epoch).
        key (`str`, *optional*, defaults to `"samples"`): tracker key of the image.
        save_dir (`str`, *optional*): also save `step_<global_step>.png` here.
        label_column (`str`, *optional*, defaults to `"unsafe"`): metadata key shown in captions when present.
    """

    def __init__(self, max_images: int = 16, every_n_calls: int = 1, key: str = "samples", save_dir: str | None = None,
                 label_column: str = "unsafe"):
        if max_images < 1 or every_n_calls < 1:
            raise ValueError("max_images and every_n_calls must be >= 1")
        self.max_images = max_images
        self.every_n_calls = every_n_calls
        self.key = key
        self.save_dir = save_dir
        self.label_column = label_column
        self._calls = 0
        self._warned = False

    def captions(self, prompts, metadata, rewards) -> list[str]:
        out = []
        for i, prompt in enumerate(prompts):
            text = f"{prompt} | r={float(rewards[i]):.3f}"
            meta = metadata[i] if metadata is not None and i < len(metadata) else None
            if isinstance(meta, dict) and self.label_column in meta:
                text += f" | {self.label_column}={meta[self.label_column]}"
            out.append(text)
        return out

    def build_grid(self, prompt_image_data):
        """The captioned grid (PIL image) of the first `max_images` samples."""
        from .image_grid import captioned_grid

        images, captions = [], []
        for entry in prompt_image_data:
            batch_images, prompts, metadata, rewards = entry[0], entry[1], entry[2], entry[3]
            rewards = torch.as_tensor(rewards).detach().float().cpu()
            for image, caption in zip(batch_images, self.captions(prompts, metadata, rewards)):
                if len(images) < self.max_images:
                    images.append(image.detach().float().cpu())
                    captions.append(caption)
        if not images:
            raise ValueError("prompt_image_data holds no images")
        return captioned_grid(torch.stack(images), captions)

    def __call__(self, prompt_image_data, global_step: int, tracker):
        self._calls += 1
        if (self._calls - 1) % self.every_n_calls:
            return
        grid = self.build_grid(prompt_image_data)
        if self.save_dir:
            os.makedirs(self.save_dir, exist_ok=True)
            grid.save(os.path.join(self.save_dir, f"step_{global_step}.png"))
        array = np.asarray(grid)  # (H, W, 3) uint8
        name = getattr(tracker, "name", None)
        if name == "tensorboard":
            tracker.log_images({self.key: array[None]}, step=global_step, dataformats="NHWC")
        elif name == "wandb":
            tracker.log_images({self.key: [grid]}, step=global_step)
        elif name == "none":
            tracker.log_images({self.key: [array]}, step=global_step)
        else:
            try:
                tracker.log_images({self.key: [array]}, step=global_step)
            except (NotImplementedError, AttributeError, TypeError) as err:
                if not self._warned:
                    logger.warning("tracker %r cannot log images (%s); set save_dir to keep the grids", name, err)
                    self._warned = True


def image_grid_hook(**kwargs) -> ImageGridHook:
    """`ImageGridHook(**kwargs)`: the default image hook of the command line and the examples."""
    return ImageGridHook(**kwargs)


class NullTracker:
    """Handed to `image_samples_hook` when no tracker is configured, so TRL-style hooks run unchanged."""

    name = "none"

    def log(self, values, step=None, **kwargs):
        logger.debug("no tracker configured; dropping %d values at step %s", len(values), step)

    def log_images(self, values, step=None, **kwargs):
        logger.debug("no tracker configured; dropping %d images at step %s", len(values), step)
