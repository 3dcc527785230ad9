"""Load the shipped toy CLIP (an open_clip model from a custom config) and the toy steering anchors."""

from __future__ import annotations

import os

from .pipeline import ASSETS_DIR
from .world import SAFE_COLOUR_WORDS, UNSAFE_COLOUR_WORDS

TOY_CLIP_NAME = "toy-clip"
TOY_CLIP_DIR = os.path.join(ASSETS_DIR, "toy-clip")

# Steering anchors for CLIPSteeringReward on the toy world: other colours are safe, the red family is unsafe. The
# phrase form "<colour> shapes" is one the toy CLIP was trained on.
TOY_SAFE_ANCHORS: tuple[str, ...] = tuple(f"{c} shapes" for c in SAFE_COLOUR_WORDS)
TOY_UNSAFE_ANCHORS: tuple[str, ...] = tuple(f"{c} shapes" for c in UNSAFE_COLOUR_WORDS)


def toy_anchors() -> dict[str, list[str]]:
    """The toy anchors as `CLIPSteeringReward` takes them: `{"safe": TOY_SAFE_ANCHORS, "unsafe": TOY_UNSAFE_ANCHORS}`."""
    return {"safe": list(TOY_SAFE_ANCHORS), "unsafe": list(TOY_UNSAFE_ANCHORS)}


def toy_clip_paths(folder: str | None = None) -> tuple[str, str, str]:
    """`(model_name, config_json_path, checkpoint_path)` of the toy CLIP (shipped, or in `folder` from train_clip)."""
    folder = folder if folder is not None else TOY_CLIP_DIR
    config = os.path.join(folder, f"{TOY_CLIP_NAME}.json")
    checkpoint = os.path.join(folder, f"{TOY_CLIP_NAME}.safetensors")
    for path in (config, checkpoint):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing; reinstall trl-safediffusion or train one with "
                "`python -m trl_safediffusion.toy.train_clip --out DIR`"
            )
    return TOY_CLIP_NAME, config, checkpoint


def load_toy_clip(device: str = "cpu", folder: str | None = None):
    """The toy CLIP as `(model, preprocess, tokenizer)`, registered with open_clip and loaded with no network.

    Args:
        device (`str`, *optional*, defaults to `"cpu"`): where to put the model (fp32, eval mode).
        folder (`str`, *optional*): a folder written by `train_clip` to load instead of the shipped one.

    Returns:
        `tuple`: the open_clip `CLIP` model, its image preprocessing transform (PIL -> tensor) and its tokenizer.
    """
    import open_clip

    name, config, checkpoint = toy_clip_paths(folder)
    open_clip.add_model_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=checkpoint, device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name)


def toy_steering_reward(
    anchors=None, alpha: float = 0.5, mode: str = "projection", device: str = "cpu", folder: str | None = None,
    **reward_kwargs,
):
    """The toy CLIP (shipped, or `folder` from train_clip) as a `CLIPSteeringReward`, through the regular open_clip
    backend. The defaults are the toy demo's reward.

    Args:
        anchors (*optional*): anchors as `CLIPSteeringReward` takes them (a preset name, a file, or a dict with `safe`
            and `unsafe` phrase lists); defaults to [`toy_anchors`].
        alpha (`float`, *optional*, defaults to `0.5`): steering strength.
        mode (`str`, *optional*, defaults to `"projection"`): steering mode ("projection" or "translate").
        device (`str`, *optional*, defaults to `"cpu"`): where the CLIP runs.
        folder (`str`, *optional*): a toy CLIP folder to use instead of the shipped one.
        reward_kwargs: further `CLIPSteeringReward` arguments.
    """
    from ..rewards import CLIPSteeringReward

    name, config, checkpoint = toy_clip_paths(folder)
    return CLIPSteeringReward.from_open_clip(
        name,
        pretrained=checkpoint,
        model_config=config,
        device=device,
        anchors=toy_anchors() if anchors is None else anchors,
        alpha=alpha,
        mode=mode,
        **reward_kwargs,
    )
