"""peft LoRA helpers shared by the adapters, for any diffusers model (a UNet, a transformer).

The Stable Diffusion (and SDXL) adapter uses them on its UNet, the SD3 and FLUX adapters on their transformer.
"""

from __future__ import annotations

import copy

import torch


def add_lora_adapter(model, rank: int, alpha: float, target_modules) -> None:
    """Add a peft LoRA adapter (`"default"`, peft's "gaussian" init) to the diffusers `model` on `target_modules`,
    with its trainable weights in float32."""
    from peft import LoraConfig

    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                 target_modules=list(target_modules)))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def check_lora_arguments(lora_rank, lora_alpha) -> None:
    if not isinstance(lora_rank, int) or lora_rank < 1:
        raise ValueError(f"lora_rank must be a positive integer, got {lora_rank!r}")
    if not lora_alpha > 0:
        raise ValueError(f"lora_alpha must be > 0, got {lora_alpha!r}")


def init_lora_weights_from_seed(model, seed: int) -> None:
    """Draw the LoRA adapters' initial weights of `model` from `seed` alone (peft's "gaussian" init: A ~ N(0, 1/r^2),
    B = 0), visiting the LoRA layers in name order; the global RNG is left as it was."""
    from peft.tuners.lora import LoraLayer

    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for _, module in sorted(model.named_modules(), key=lambda item: item[0]):
            if not isinstance(module, LoraLayer):
                continue
            for adapter, lora_a in module.lora_A.items():
                weight = lora_a.weight
                draw = torch.randn(weight.shape, generator=generator, dtype=torch.float32) / module.r[adapter]
                weight.copy_(draw.to(device=weight.device, dtype=weight.dtype))
                module.lora_B[adapter].weight.zero_()


def peft_lora_state_dict(model) -> dict[str, torch.Tensor]:
    """The LoRA weights of `model` in peft's key format (`...lora_A.weight`), float32 on the CPU: what diffusers'
    `save_lora_weights(transformer_lora_layers=...)` writes and `load_lora_weights` reads for a transformer."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def lora_adapter_metadata(model) -> dict:
    """The peft config of `model`'s default adapter as a JSON-ready dict (rank, alpha, targets), saved with the LoRA
    weights so that `load_lora_weights` rebuilds the same adapter."""
    config = model.peft_config["default"].to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}


def load_lora_state(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Load LoRA weights in diffusers or peft key format (without the component prefix) into `model`'s existing
    default adapter; keys the model lacks are a `ValueError` naming `source`."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, convert_unet_state_dict_to_peft(state), adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"LoRA checkpoint in {source} has keys the model lacks: {result.unexpected_keys[:5]}")


def fuse_lora_model(model, dtype: torch.dtype | None = None):
    """A plain copy of the diffusers `model` (same class, no peft layers) whose weights are `model`'s with its LoRA
    adapters merged, in `dtype` (by default the dtype of `model`'s base weights), on the CPU. The merge runs on the
    CPU in the dtypes the weights have."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    fused = copy.deepcopy(model).to("cpu")
    for module in fused.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)
    state = {k.replace(".base_layer", ""): v for k, v in fused.state_dict().items() if "lora_" not in k}
    plain = type(model).from_config(model.config)
    plain.load_state_dict(state)
    return plain.to(dtype or model.dtype)
