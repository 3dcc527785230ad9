"""Moved: the tiny CLIP builders now live in `trl_safediffusion.testing_utils` (test fixtures, not library API). This
module re-exports them so old import paths keep working."""

from ..testing_utils import register_open_clip_config, tiny_open_clip, tiny_open_clip_config, tiny_transformers_clip

__all__ = ["register_open_clip_config", "tiny_open_clip", "tiny_open_clip_config", "tiny_transformers_clip"]
