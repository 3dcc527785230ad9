"""How a model card names and loads each diffusers pipeline family (no torch or diffusers import)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CardFamily:
    """What a card says of a family: its name in the text, its trained denoiser, the rollout sampler (what the recipe's
    `sample_num_steps` and `sample_eta` are), and the loading snippet's dtype, steps and guidance scale (the stock
    pipeline's usual settings)."""

    name: str
    denoiser: str
    sampler: str
    dtype: str
    steps: int
    guidance_scale: float

    def recipe_labels(self) -> dict[str, str]:
        """Display names of the recipe keys whose meaning depends on the family."""
        eta = "DDIM eta" if self.sampler == "DDIM" else f"{self.sampler[:1].upper()}{self.sampler[1:]} noise level (eta)"
        return {"sample_num_steps": f"Sampler steps ({self.sampler})", "sample_eta": eta,
                "trainable_modules": f"Trained {self.denoiser} modules"}


DEFAULT_PIPELINE_CLASS = "StableDiffusionPipeline"
_FLOW = "flow SDE"
CARD_FAMILIES = {
    "StableDiffusionPipeline": CardFamily("Stable Diffusion", "UNet", "DDIM", "float16", 50, 5.0),
    "StableDiffusionXLPipeline": CardFamily("Stable Diffusion XL", "UNet", "DDIM", "float16", 30, 5.0),
    "StableDiffusion3Pipeline": CardFamily("Stable Diffusion 3", "transformer", _FLOW, "bfloat16", 28, 4.5),
    "FluxPipeline": CardFamily("FLUX", "transformer", _FLOW, "bfloat16", 28, 3.5),
}


def card_family(pipeline_class: str | None) -> CardFamily:
    """The card text of `pipeline_class` (Stable Diffusion's when `None`; generic for a class not listed)."""
    pipeline_class = pipeline_class or DEFAULT_PIPELINE_CLASS
    return CARD_FAMILIES.get(pipeline_class) or CardFamily(f"`{pipeline_class}`", "denoiser", "sampler", "float16",
                                                          50, 5.0)
