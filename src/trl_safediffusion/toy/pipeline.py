"""Load the shipped toy pipelines, offline: the Stable Diffusion one (a real `diffusers.StableDiffusionPipeline`) and
its flow-matching counterpart (a real `diffusers.StableDiffusion3Pipeline`)."""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
TOY_PIPELINE_DIR = os.path.join(ASSETS_DIR, "toy-sd")
TOY_FLOW_PIPELINE_DIR = os.path.join(ASSETS_DIR, "toy-sd3")

# Sampling settings the toy pipeline was evaluated with.
TOY_NUM_INFERENCE_STEPS = 20
TOY_GUIDANCE_SCALE = 5.0


def _shipped_folder(folder: str, name: str, train_command: str) -> str:
    """`folder` if it holds a diffusers pipeline, else a `FileNotFoundError` that says how to get one."""
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise FileNotFoundError(
            f"the {name} is missing from {folder}; reinstall trl-safediffusion or train one with `{train_command}` "
            "and pass its path"
        )
    return folder


def _ready(pipe, device: str | torch.device, dtype: torch.dtype):
    """A loaded toy pipeline moved to `device` / `dtype` (applied after loading: the keyword for it differs across
    diffusers versions, torch_dtype / dtype), its progress bar disabled."""
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def toy_pipeline_path() -> str:
    """Folder of the shipped toy pipeline (diffusers format, safetensors)."""
    return _shipped_folder(TOY_PIPELINE_DIR, "toy pipeline", "python -m trl_safediffusion.toy.train_pipeline --out DIR")


def load_toy_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path: str | None = None):
    """The toy `StableDiffusionPipeline`: 32x32 images of coloured shapes from prompts like "two blue triangles".

    Args:
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): where to put the pipeline.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): weights dtype (the files store fp16).
        path (`str`, *optional*): a pipeline folder to load instead of the shipped one (e.g. a retrained one).

    Returns:
        `diffusers.StableDiffusionPipeline` with the safety checker off and the progress bar disabled.
    """
    from diffusers import StableDiffusionPipeline

    folder = path if path is not None else toy_pipeline_path()
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False, local_files_only=True
    )
    return _ready(pipe, device, dtype)


def toy_flow_pipeline_path() -> str:
    """Folder of the shipped toy flow-matching pipeline (diffusers `StableDiffusion3Pipeline` format, safetensors)."""
    return _shipped_folder(TOY_FLOW_PIPELINE_DIR, "toy flow-matching pipeline",
                           "python -m trl_safediffusion.toy.train_flow_pipeline --out DIR --half")


def load_toy_flow_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path: str | None = None
):
    """The toy `StableDiffusion3Pipeline`: the toy world's VAE and text tower with a rectified-flow
    `SD3Transformer2DModel` and `FlowMatchEulerDiscreteScheduler`; 32x32 images from prompts like "two blue triangles".

    Args:
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): where to put the pipeline.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): weights dtype (the shipped files store fp16).
        path (`str`, *optional*): a pipeline folder to load instead of the shipped one (e.g. a retrained one).

    Returns:
        `diffusers.StableDiffusion3Pipeline` without T5 (`text_encoder_3` is None) and the progress bar disabled.
    """
    from diffusers import StableDiffusion3Pipeline

    folder = path if path is not None else toy_flow_pipeline_path()
    # A folder without T5 stores text_encoder_3 and tokenizer_3 as null; diffusers asks for them to be passed as None.
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None, local_files_only=True)
    return _ready(pipe, device, dtype)
