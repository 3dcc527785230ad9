"""Mixed-precision placement that keeps the base's weights for saving (used by the pipeline adapters)."""

from __future__ import annotations

import contextlib

import torch


def _module_dtype(module) -> torch.dtype:
    inner = getattr(module, "module", module)  # DistributedDataParallel and similar wrappers
    dtype = getattr(inner, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(inner.parameters()).dtype


def _named_tensors(module: torch.nn.Module):
    """`(name, tensor)` for every parameter and buffer of `module`, named as in its state dict."""
    yield from module.named_parameters()
    yield from module.named_buffers()


class KeepsBaseWeights:
    """Mixin for adapters: `cast_for_training` that remembers each component's dtype and the originals of the frozen
    tensors it narrowed, and `_base_dtypes()`, within which every component holds what a saved folder must contain.

    The adapter provides `_components()` (`(name, module)` pairs, the trainable model's name being
    `model_component`) and `use_lora`, and sets `_original_dtypes = {}` and `_original_tensors = {}` in `__init__`.
    """

    model_component = "unet"

    def cast_for_training(self, device, inference_dtype: torch.dtype):
        r"""
        Place the components for training, as the interface's [`DDPOStableDiffusionPipeline.cast_for_training`]
        (frozen components and, with LoRA, the model's base weights in `inference_dtype`; trainable weights in
        float32), and remember what the cast changed so that `save_pretrained` writes the base's weights, not the
        training copies: the frozen components bit for bit as they were before (same dtype, same values), and the
        trained model in the dtype of the base's model.

        Memory: a cast to a narrower dtype (float32 -> bf16 / fp16, or between bf16 and fp16) cannot be undone, so
        the original of every frozen tensor cast that way is kept in CPU memory for the life of the pipeline. For an
        fp32 Stable Diffusion 1.5 base under `mixed_precision="bf16"` or `"fp16"` that is about 0.5 GB (text encoder)
        + 0.3 GB (VAE), plus 3.4 GB (the UNet base weights) with LoRA. Nothing is kept without mixed precision, nor
        when the pipeline was loaded in the inference dtype (`torch_dtype=`); widening casts (to float32) are exact
        and keep nothing. Calling it again keeps the first originals.

        Args:
            device (`torch.device`): the training device.
            inference_dtype (`torch.dtype`): float32, or the mixed-precision dtype (bf16 / fp16).
        """
        for component, module in self._components():
            self._original_dtypes.setdefault(component, _module_dtype(module))
            kept = self._original_tensors.setdefault(component, {})
            for name, tensor in _named_tensors(module):
                if not tensor.is_floating_point():
                    tensor.data = tensor.data.to(device)
                    continue
                trained = component == self.model_component and (tensor.requires_grad or not self.use_lora)
                target = torch.float32 if trained else inference_dtype
                if tensor.dtype != target and target != torch.float32 and name not in kept:
                    kept[name] = tensor.detach().to("cpu")  # on the CPU already: the same storage, no copy
                tensor.data = tensor.data.to(device=device, dtype=target)

    @contextlib.contextmanager
    def _base_dtypes(self):
        """Within the block every component holds the weights `save_pretrained` writes: the kept originals of the cast
        frozen tensors, the other tensors in their component's original dtype (LoRA adapter weights stay float32 so
        that a merge runs in full precision). The training tensors are put back afterwards."""
        swapped = []
        try:
            for component, module in self._components():
                kept = self._original_tensors.get(component, {})
                dtype = self._original_dtypes.get(component)
                for name, tensor in _named_tensors(module):
                    if name in kept:
                        replacement = kept[name]
                    elif (dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype
                          and not (self.use_lora and tensor.requires_grad)):
                        replacement = tensor.detach().to(dtype)
                    else:
                        continue
                    swapped.append((tensor, tensor.data))
                    tensor.data = replacement
            yield
        finally:
            for tensor, data in reversed(swapped):
                tensor.data = data
