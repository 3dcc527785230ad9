"""Offline building blocks: a CLIP BPE tokenizer from open_clip's shipped vocabulary and tiny Stable Diffusion
components built from configs. Used by the tests, the benchmarks and the embedded toy world; nothing is downloaded."""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os

import torch


def open_clip_bpe_path() -> str:
    """Path of `bpe_simple_vocab_16e6.txt.gz`, the CLIP BPE merges file that open_clip ships in its wheel."""
    spec = importlib.util.find_spec("open_clip")  # located without importing open_clip (a slow import)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip_torch is not installed; pip install open_clip_torch")
    path = os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"open_clip does not ship {path}; reinstall open_clip_torch")
    return path


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP byte-level BPE alphabet: printable bytes map to themselves, the rest to code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in sorted(mapping, key=lambda b: (b not in printable, printable.index(b) if b in printable else b))]


@functools.lru_cache(maxsize=1)
def clip_bpe_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The 49,408-token CLIP vocabulary and its 48,894 merges, built exactly as CLIP's original tokenizer does."""
    with gzip.open(open_clip_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    base = _byte_alphabet()
    vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def clip_tokenizer(model_max_length: int = 77):
    """A transformers `CLIPTokenizer` equal to openai/clip-vit-*'s, built offline from open_clip's BPE file."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe_vocab_and_merges()
    try:
        return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    except TypeError:  # transformers 4.x only reads files
        import json
        import tempfile

        tmp = tempfile.mkdtemp(prefix="clip-tok-")
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        return CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"),
                             model_max_length=model_max_length)


def tiny_sd_components(seed: int = 0, prediction_type: str = "epsilon", sample_size: int = 8, cross_attention_dim: int = 32):
    """Tiny UNet (~1M parameters), VAE and CLIP text encoder built from configs after `torch.manual_seed(seed)`.

    The VAE downsamples by 2, so `sample_size=8` latents decode to 16x16 images.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=32,
        sample_size=sample_size * 2,
    )
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=cross_attention_dim,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=cross_attention_dim,
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type=prediction_type,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_sd_pipeline(seed: int = 0, prediction_type: str = "epsilon", **kwargs):
    """A real `diffusers.StableDiffusionPipeline` built from `tiny_sd_components`, with the safety checker off."""
    from diffusers import StableDiffusionPipeline

    comps = tiny_sd_components(seed=seed, prediction_type=prediction_type, **kwargs)
    return StableDiffusionPipeline(**comps, requires_safety_checker=False)
