"""The CLIP BPE tokenizer, built offline from the merges file open_clip ships (`bpe_simple_vocab_16e6.txt.gz`).

Library code: the embedded toy world's pipeline uses it, as do the tiny test models in `testing_utils`. Nothing is
downloaded.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os


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
