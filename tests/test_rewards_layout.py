"""Module layout: one reward stage per module, old import paths still work, and test fixtures stay out of the library."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

SRC = os.path.join(os.path.dirname(__file__), "..", "src", "trl_safediffusion")
SHIMS = {os.path.join("trl_safediffusion", "tiny.py"), os.path.join("trl_safediffusion", "rewards", "tiny_clip.py")}


def _imported_modules(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names.update(f"{node.module or ''}.{alias.name}" for alias in node.names)
    return names


def test_no_library_module_but_the_shims_imports_testing_utils():
    offenders = []
    for folder, _, files in os.walk(SRC):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, os.path.join(SRC, ".."))
            if name.endswith(".py") and rel not in SHIMS and rel != os.path.join("trl_safediffusion", "testing_utils.py"):
                if any(m.split(".")[-1] == "testing_utils" for m in _imported_modules(path)):
                    offenders.append(rel)
    assert offenders == []


def test_importing_the_library_loads_no_test_fixture():
    code = (
        "import sys, trl_safediffusion, trl_safediffusion.rewards, trl_safediffusion.cli, trl_safediffusion.toy.demo, "
        "trl_safediffusion.toy.train_pipeline; "
        "print(sorted(m for m in sys.modules if m.endswith(('testing_utils', '.tiny', 'tiny_clip'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reward_modules_are_small():
    for name in ("anchors.py", "preprocess.py", "backends.py", "clip_steering.py"):
        with open(os.path.join(SRC, "rewards", name), encoding="utf-8") as f:
            assert len(f.read().splitlines()) < 400, name


def test_old_import_paths_give_the_same_objects():
    from trl_safediffusion import testing_utils, tiny, tokenization
    from trl_safediffusion.rewards import anchors, backends, clip_steering, preprocess, tiny_clip

    assert clip_steering.AnchorSet is anchors.AnchorSet and clip_steering.load_anchors is anchors.load_anchors
    assert clip_steering.ANCHOR_PRESETS is anchors.ANCHOR_PRESETS
    assert clip_steering.get_anchor_preset is anchors.get_anchor_preset
    assert clip_steering.PreprocessSpec is preprocess.PreprocessSpec
    assert clip_steering.preprocess_images is preprocess.preprocess_images
    assert clip_steering.OpenCLIPBackend is backends.OpenCLIPBackend
    assert clip_steering.TransformersCLIPBackend is backends.TransformersCLIPBackend
    assert tiny.tiny_sd_pipeline is testing_utils.tiny_sd_pipeline
    assert tiny.tiny_sd_components is testing_utils.tiny_sd_components
    assert tiny.clip_tokenizer is tokenization.clip_tokenizer
    assert tiny.clip_bpe_vocab_and_merges is tokenization.clip_bpe_vocab_and_merges
    assert tiny_clip.tiny_open_clip is testing_utils.tiny_open_clip
    assert tiny_clip.tiny_transformers_clip is testing_utils.tiny_transformers_clip
    assert tiny_clip.tiny_open_clip_config is testing_utils.tiny_open_clip_config
