"""Moved to `trl_safediffusion.image_grid` (the training image hook uses it too); this path keeps working."""

from ..image_grid import captioned_grid

__all__ = ["captioned_grid"]
