"""Saved pipelines after mixed-precision training: the frozen components are the base's files byte for byte, the
trained UNet is in the base's dtype, and stock diffusers loads and samples the folder without a `torch_dtype`."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import brightness_reward
from trl_safediffusion import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline
from trl_safediffusion.testing_utils import tiny_sd_pipeline

FROZEN_FILES = ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


def _base_folder(tmp_path, dtype=torch.float32) -> str:
    folder = str(tmp_path / "base")
    tiny_sd_pipeline(seed=0).to(dtype=dtype).save_pretrained(folder, safe_serialization=True)
    return folder


def _train(tmp_path, base: str, precision: str, use_lora: bool, torch_dtype=None) -> DDPOTrainer:
    pipe = DefaultDDPOStableDiffusionPipeline(base, use_lora=use_lora, torch_dtype=torch_dtype)
    config = DDPOConfig(
        num_epochs=1, sample_num_steps=3, sample_batch_size=2, sample_num_batches_per_epoch=1, train_batch_size=2,
        mixed_precision=precision, train_learning_rate=1e-2, save_freq=0, logdir=str(tmp_path / "logs"),
    )
    trainer = DDPOTrainer(config, brightness_reward, lambda: ("a photo of a cat", {}), pipe)
    trainer.train()
    return trainer


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _sample_with_stock_diffusers(folder: str) -> np.ndarray:
    from diffusers import StableDiffusionPipeline

    stock = StableDiffusionPipeline.from_pretrained(folder)  # no torch_dtype: the dtypes the files hold
    stock.set_progress_bar_config(disable=True)
    out = stock("a photo of a cat", num_inference_steps=2, guidance_scale=5.0, height=16, width=16,
                output_type="np", generator=torch.Generator().manual_seed(0))
    return out.images


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora-fused"])
def test_mixed_precision_save_keeps_the_base_and_samples_with_stock_diffusers(tmp_path, precision, use_lora):
    base = _base_folder(tmp_path)
    trainer = _train(tmp_path, base, precision, use_lora)
    pipe = trainer.sd_pipeline
    assert pipe.vae.dtype == pipe.text_encoder.dtype == DTYPES[precision]  # training did run in the narrow dtype
    out = str(tmp_path / "saved")
    trainer.save_pretrained(out, fuse_lora=use_lora)

    for name in FROZEN_FILES:
        assert _read(os.path.join(out, name)) == _read(os.path.join(base, name)), name
    unet = load_file(os.path.join(out, UNET_FILE))
    base_unet = load_file(os.path.join(base, UNET_FILE))
    assert unet.keys() == base_unet.keys()
    assert {t.dtype for t in unet.values()} == {torch.float32}
    assert any(not torch.equal(unet[k], base_unet[k]) for k in unet)  # the trained UNet, not the base's
    if use_lora:  # frozen base weights the adapters do not touch keep the base's float32 values exactly
        assert torch.equal(unet["conv_in.weight"], base_unet["conv_in.weight"])

    images = _sample_with_stock_diffusers(out)
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    # saving put the training tensors back: training goes on in the inference dtype
    assert pipe.vae.dtype == pipe.text_encoder.dtype == DTYPES[precision]
    assert all(p.dtype == torch.float32 for p in trainer._trainable_params)


def test_fused_unet_is_merged_from_the_base_weights_not_their_bf16_copies(tmp_path):
    base = _base_folder(tmp_path)
    trainer = _train(tmp_path, base, "bf16", use_lora=True)
    out = str(tmp_path / "saved")
    trainer.save_pretrained(out, fuse_lora=True)

    from diffusers import StableDiffusionPipeline

    # the same adapters on the untouched float32 base: what the fused UNet must equal
    lora_folder = str(tmp_path / "lora")
    trainer.save_pretrained(lora_folder)
    reference = StableDiffusionPipeline.from_pretrained(base)
    reference.load_lora_weights(lora_folder)
    reference.fuse_lora()
    expected = {k.replace(".base_layer", ""): v for k, v in reference.unet.state_dict().items() if "lora_" not in k}
    fused = load_file(os.path.join(out, UNET_FILE))
    assert fused.keys() == expected.keys()
    for key, value in fused.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6, msg=key)


def test_half_precision_base_is_saved_in_its_own_dtype(tmp_path):
    """An fp16 base trained without mixed precision: the UNet trains in float32 but is saved in fp16 as the base
    was; the VAE and text encoder (upcast for training) are written back as the base's fp16 files."""
    base = _base_folder(tmp_path, dtype=torch.float16)
    trainer = _train(tmp_path, base, "no", use_lora=False, torch_dtype=torch.float16)
    assert trainer.sd_pipeline.unet.dtype == torch.float32
    out = str(tmp_path / "saved")
    trainer.save_pretrained(out)
    for name in FROZEN_FILES:
        assert _read(os.path.join(out, name)) == _read(os.path.join(base, name)), name
    assert {t.dtype for t in load_file(os.path.join(out, UNET_FILE)).values()} == {torch.float16}
