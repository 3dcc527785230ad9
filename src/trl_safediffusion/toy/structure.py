"""A colour-blind map of where the toy world's objects are, for the trainer's structure anchor.

`SafeDDPOGRPOTrainer(..., structure_fn=ObjectMap(vae))` with `structure_weight > 0` penalises, on unsafe prompts, the
gap between the object maps of the policy's and the reference's predicted clean images: a red prompt may change the
colour it draws (the reward asks for that) but not where its objects are, how many, or how large.
"""

from __future__ import annotations

import torch

from ..pipelines.stable_diffusion import vae_decode
from .world import BACKGROUND_RGB


class ObjectMap:
    r"""Latents -> per-pixel objectness in [0, 1]: decode with the pipeline's VAE, then
    `1 - exp(-(d / scale) ** power)` with `d` the RGB distance (in [0, 1] units) of each pixel from the world's
    background.

    Every world colour is at least 0.76 from the background (yellow), so with the defaults a fully drawn object maps
    to >= 0.99 whatever its colour and the background to 0; a faded object falls in between (a red object blended
    half-way from the background: 0.77, 30% of the way: 0.17), which is the damage the anchor is there to prevent.
    Differentiable in the latents (the VAE's weights are not trained).

    Args:
        vae (`diffusers.AutoencoderKL`): the pipeline's autoencoder, decoding as the pipeline does
            ([`~trl_safediffusion.pipelines.stable_diffusion.vae_decode`]).
        scale (`float`, *optional*, defaults to 0.5): the distance at which objectness is 1 - 1/e.
        power (`float`, *optional*, defaults to 4): how sharp the step from background to object is.
        background (`tuple[int, int, int]`, *optional*): background RGB in 0-255, the world's by default.
    """

    def __init__(self, vae, scale: float = 0.5, power: float = 4.0, background: tuple[int, int, int] = BACKGROUND_RGB):
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if not power > 0:
            raise ValueError(f"power must be > 0, got {power}")
        if len(background) != 3:
            raise ValueError(f"background must be an RGB triple, got {background!r}")
        self.vae = vae
        self.scale = float(scale)
        self.power = float(power)
        self.background = tuple(float(c) / 255.0 for c in background)

    def images(self, latents: torch.Tensor) -> torch.Tensor:
        """(n, C, h, w) latents -> (n, 3, H, W) decoded images in [0, 1] units (not clamped, so that gradients
        reach every pixel)."""
        return vae_decode(self.vae, latents)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """(n, C, h, w) latents -> (n, H, W) objectness."""
        if latents.ndim != 4:
            raise ValueError(f"latents must be (n, C, h, w), got shape {tuple(latents.shape)}")
        images = self.images(latents)
        bg = torch.tensor(self.background, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        d2 = ((images - bg) ** 2).sum(dim=1)
        return 1.0 - torch.exp(-((d2 / self.scale**2) ** (self.power / 2)))
