"""Tiny models built from configs after `torch.manual_seed`, for the tests and the benchmarks (nothing is downloaded).

Test fixtures, not library API: the library never imports this module. It holds tiny Stable Diffusion, SDXL,
Stable Diffusion 3 and FLUX.1 pipelines (built from configs, offline tokenizers) and tiny open_clip and transformers
CLIP models for the steering reward.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

from .tokenization import clip_tokenizer

_CONFIG_DIR: str | None = None  # per-process folder of registered open_clip configs


def _tiny_unet(seed: int, sample_size: int, cross_attention_dim: int, **config):
    """A two-level `UNet2DConditionModel` (channels 32, 64, one cross-attention level) built after
    `torch.manual_seed(seed)`; `config` adds or overrides config entries."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=32,
        **config,
    )


def _tiny_vae(seed: int, sample_size: int, latent_channels: int = 4, **config):
    """A two-level `AutoencoderKL` (channels 32, 64: it downsamples by 2) built after `torch.manual_seed(seed)`;
    `config` adds config entries (the family's `scaling_factor`, `shift_factor`, ...)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=latent_channels,
        norm_num_groups=32,
        sample_size=sample_size,
        **config,
    )


def _tiny_clip_text(model_class, seed: int, hidden_size: int, num_hidden_layers: int, **config):
    """A transformers CLIP text encoder of `model_class` (`CLIPTextModel` or `CLIPTextModelWithProjection`) over the
    CLIP vocabulary, built after `torch.manual_seed(seed)`; `config` adds `CLIPTextConfig` entries."""
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    return model_class(CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=num_hidden_layers,
        vocab_size=49408,
        max_position_embeddings=77,
        **config,
    ))


def _tiny_t5(seed: int, vocab_size: int, d_model: int, **config):
    """A two-layer transformers `T5EncoderModel` built after `torch.manual_seed(seed)`; `config` adds `T5Config`
    entries."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, **config))


def _tiny_ddim(**config):
    """Stable Diffusion's `DDIMScheduler` (scaled-linear betas 0.00085 to 0.012, steps offset 1); `config` adds
    config entries."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        **config,
    )


def tiny_sd_components(seed: int = 0, prediction_type: str = "epsilon", sample_size: int = 8, cross_attention_dim: int = 32):
    """Tiny UNet (~1M parameters), VAE and CLIP text encoder built from configs after `torch.manual_seed(seed)`.

    The VAE downsamples by 2, so `sample_size=8` latents decode to 16x16 images.
    """
    from transformers import CLIPTextModel

    unet = _tiny_unet(seed, sample_size, cross_attention_dim, attention_head_dim=8)
    vae = _tiny_vae(seed, sample_size * 2)
    text_encoder = _tiny_clip_text(CLIPTextModel, seed, cross_attention_dim, 5, projection_dim=cross_attention_dim)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "scheduler": _tiny_ddim(prediction_type=prediction_type),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_sd_pipeline(seed: int = 0, prediction_type: str = "epsilon", **kwargs):
    """A real `diffusers.StableDiffusionPipeline` built from `tiny_sd_components`, with the safety checker off."""
    from diffusers import StableDiffusionPipeline

    comps = tiny_sd_components(seed=seed, prediction_type=prediction_type, **kwargs)
    return StableDiffusionPipeline(**comps, requires_safety_checker=False)


def tiny_sdxl_components(seed: int = 0, sample_size: int = 8, text_dims: tuple[int, int] = (32, 48),
                         pooled_dim: int = 32, time_embed_dim: int = 8):
    """Tiny SDXL components built from configs after `torch.manual_seed(seed)`: a `text_time` UNet whose
    cross-attention dimension is the two text encoders' hidden sizes together (`sum(text_dims)`) and whose added
    embedding reads the pooled projection (`pooled_dim`) and six time ids (`6 * time_embed_dim`), a `CLIPTextModel`,
    a `CLIPTextModelWithProjection`, the offline CLIP tokenizer twice, a VAE that downsamples by 2 (`sample_size=8`
    latents decode to 16x16 images, with `force_upcast` as SDXL's VAE has it) and a DDIM scheduler.
    """
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = _tiny_unet(
        seed,
        sample_size,
        sum(text_dims),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=pooled_dim + 6 * time_embed_dim,
    )
    vae = _tiny_vae(seed, sample_size * 2, scaling_factor=0.13025, force_upcast=True)
    text = {"projection_dim": pooled_dim, "hidden_act": "gelu"}
    text_encoder = _tiny_clip_text(CLIPTextModel, seed, text_dims[0], 3, **text)
    text_encoder_2 = _tiny_clip_text(CLIPTextModelWithProjection, seed + 1, text_dims[1], 3, **text)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": clip_tokenizer(),
        "tokenizer_2": clip_tokenizer(),
        "scheduler": _tiny_ddim(timestep_spacing="leading"),
    }


def tiny_sdxl_pipeline(seed: int = 0, **kwargs):
    """A real `diffusers.StableDiffusionXLPipeline` built from `tiny_sdxl_components`, without the watermarker."""
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**tiny_sdxl_components(seed=seed, **kwargs), add_watermarker=False)


def tiny_sd3_components(seed: int = 0, with_t5: bool = False, sample_size: int = 8):
    """Tiny Stable Diffusion 3 components built from configs after `torch.manual_seed(seed)`: an `SD3Transformer2DModel`
    (patch size 2), a VAE with 4 latent channels (downsampling by 2, SD3's `scaling_factor` and `shift_factor`), two
    CLIP text encoders with projection (hidden size 32 each: concatenated they fill `joint_attention_dim` 64; their
    projections, 32 each, make the pooled 64) and a `FlowMatchEulerDiscreteScheduler` with SD3's shift 3.

    `with_t5=True` adds a tiny `T5EncoderModel` (d_model 64) whose tokenizer is the offline CLIP tokenizer (a T5
    tokenizer cannot be built offline); otherwise `text_encoder_3` and `tokenizer_3` are None, as diffusers allows.
    `sample_size=8` latents decode to 16x16 images.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
        pos_embed_max_size=16,
    )
    vae = _tiny_vae(seed, sample_size * 2, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                    use_post_quant_conv=False)
    encoders = [
        _tiny_clip_text(CLIPTextModelWithProjection, seed + offset, 32, 2, projection_dim=32, hidden_act="gelu")
        for offset in (0, 1)
    ]
    text_encoder_3 = tokenizer_3 = None
    if with_t5:
        text_encoder_3 = _tiny_t5(seed + 2, 49408, 64)
        tokenizer_3 = clip_tokenizer()
    return {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "vae": vae,
        "text_encoder": encoders[0],
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": encoders[1],
        "tokenizer_2": clip_tokenizer(),
        "text_encoder_3": text_encoder_3,
        "tokenizer_3": tokenizer_3,
    }


def tiny_sd3_pipeline(seed: int = 0, with_t5: bool = False, **kwargs):
    """A real `diffusers.StableDiffusion3Pipeline` built from `tiny_sd3_components`."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(**tiny_sd3_components(seed=seed, with_t5=with_t5, **kwargs))


def tiny_t5_tokenizer(model_max_length: int = 512):
    """A T5 tokenizer (`T5TokenizerFast`) built offline: a `tokenizers` Unigram model over ~230 pieces (T5's
    `<pad>` 0, `</s>` 1, `<unk>` 2, the word boundary, letters, digits, punctuation and a few whole words) with T5's
    Metaspace pre-tokenizer and the `</s>` suffix. Saved with a pipeline, it loads back with `from_pretrained`."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    boundary = "\u2581"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (boundary, -2.0)]
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(char, -5.0), (boundary + char, -4.0)]
    words = ("a an the of on in with and photo picture image painting drawing portrait cat dog car tree house person "
             "man woman object red green blue white black bright dark sky city").split()
    pieces += [(boundary + word, -3.0) for word in words]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement=boundary, prepend_scheme="always", split=True),
    ])
    backend.decoder = decoders.Metaspace(replacement=boundary, prepend_scheme="always", split=True)
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=model_max_length)


def tiny_flux_components(seed: int = 0, guidance_embeds: bool = True):
    """Tiny FLUX.1 components built from configs after `torch.manual_seed(seed)`: a `FluxTransformer2DModel` (patch
    size 1 over the packed latents: 16 channels = 4 latent channels x 2 x 2, one double and one single block, 2 heads
    of 16 with rotary axes (4, 6, 6); `guidance_embeds` as FLUX.1-dev, False for schnell), a VAE with 4 latent channels
    (downsampling by 2, FLUX's `scaling_factor` and `shift_factor`, no quant convs), a `CLIPTextModel` (hidden 32: the
    pooled projection) with the offline CLIP tokenizer, a `T5EncoderModel` (d_model 32: the joint attention dim, no
    dropout) with `tiny_t5_tokenizer`, both encoders in eval mode, and FLUX.1-dev's `FlowMatchEulerDiscreteScheduler`
    (shift 3, dynamic shifting).

    16 x 16 images are 8 x 8 latents, packed to 16 tokens of 16 channels.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    latent_channels, text_dim = 4, 32
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=latent_channels * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_dim,
        pooled_projection_dim=text_dim,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    )
    vae = _tiny_vae(seed, 16, latent_channels, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                    use_post_quant_conv=False)
    text_encoder = _tiny_clip_text(CLIPTextModel, seed + 1, text_dim, 2, hidden_act="gelu")
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder_2 = _tiny_t5(seed + 2, len(tokenizer_2), text_dim, dropout_rate=0.0)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder.eval(),
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer_2": tokenizer_2,
    }


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True):
    """A real `diffusers.FluxPipeline` built from `tiny_flux_components` (FLUX.1-dev-like with `guidance_embeds=True`,
    schnell-like without)."""
    from diffusers import FluxPipeline

    return FluxPipeline(**tiny_flux_components(seed=seed, guidance_embeds=guidance_embeds))


def tiny_open_clip_config(
    embed_dim: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    vision_width: int = 64,
    vision_layers: int = 2,
    text_width: int = 64,
    text_layers: int = 2,
    heads: int = 4,
    context_length: int = 32,
) -> dict:
    """An open_clip model config (the JSON format of `open_clip/model_configs/*.json`) for a small ViT CLIP."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "layers": vision_layers,
            "width": vision_width,
            "head_width": vision_width // heads,
            "patch_size": patch_size,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": text_width,
            "heads": heads,
            "layers": text_layers,
        },
    }


def register_open_clip_config(name: str, config: dict) -> str:
    """Write `config` as `<name>.json` in a per-process temporary folder and register it with open_clip.

    Returns:
        `str`: the path of the JSON file (usable as `model_config` in `CLIPSteeringReward.from_open_clip`).
    """
    import open_clip

    global _CONFIG_DIR
    if _CONFIG_DIR is None:
        _CONFIG_DIR = tempfile.mkdtemp(prefix="trl-sd-clip-configs-")
    path = os.path.join(_CONFIG_DIR, f"{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    open_clip.add_model_config(path)
    return path


def tiny_open_clip(seed: int = 0, name: str = "tiny-clip-test", **config_kwargs):
    """A randomly initialised open_clip model from a registered tiny config, with its tokenizer and eval transform.

    Args:
        seed (`int`, *optional*, defaults to `0`): `torch.manual_seed` before building.
        name (`str`, *optional*, defaults to `"tiny-clip-test"`): architecture name to register.
        **config_kwargs: `tiny_open_clip_config` arguments (embed_dim, image_size, patch_size, widths, layers, ...).

    Returns:
        `tuple`: (model, tokenizer, preprocess) where preprocess is open_clip's eval torchvision `Compose`.
    """
    import open_clip

    register_open_clip_config(name, tiny_open_clip_config(**config_kwargs))
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    tokenizer = open_clip.get_tokenizer(name)
    return model.eval(), tokenizer, preprocess


def tiny_transformers_clip(seed: int = 0, embed_dim: int = 32, image_size: int = 32, resize_edge: int | None = None):
    """A randomly initialised transformers `CLIPModel`, the offline CLIP tokenizer and a `CLIPImageProcessor`.

    Args:
        seed (`int`, *optional*, defaults to `0`): `torch.manual_seed` before building.
        embed_dim (`int`, *optional*, defaults to `32`): projection dimension.
        image_size (`int`, *optional*, defaults to `32`): vision input size (also the crop size).
        resize_edge (`int`, *optional*): shortest-edge resize target of the processor; defaults to `image_size`.

    Returns:
        `tuple`: (model, tokenizer, image_processor).
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text_config = {
        "vocab_size": 49408,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": 8,
    }
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=embed_dim))
    processor = CLIPImageProcessor(
        size={"shortest_edge": resize_edge or image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return model.eval(), clip_tokenizer(), processor
