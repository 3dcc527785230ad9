"""Moved: the tiny Stable Diffusion builders now live in `trl_safediffusion.testing_utils` (test fixtures, not library
API) and the offline CLIP BPE tokenizer in `trl_safediffusion.tokenization`. This module re-exports them so old import
paths keep working."""

from .testing_utils import tiny_sd_components, tiny_sd_pipeline
from .tokenization import clip_bpe_vocab_and_merges, clip_tokenizer, open_clip_bpe_path

__all__ = ["clip_bpe_vocab_and_merges", "clip_tokenizer", "open_clip_bpe_path", "tiny_sd_components", "tiny_sd_pipeline"]
