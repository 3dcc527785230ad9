"""User-facing text: install instructions that work (the package is not on PyPI; huggingface_hub's CLI is `hf`) and no
references to the project's issue numbers."""

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _docs():
    return sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True)) + [os.path.join(REPO, "README.md")]


def _hits(paths, pattern):
    regex = re.compile(pattern, re.IGNORECASE)
    hits = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if regex.search(line):
                    hits.append(f"{os.path.relpath(path, REPO)}:{lineno}: {line.strip()}")
    return hits


def test_docs_install_from_the_repository_and_log_in_with_hf():
    assert len(_docs()) > 5
    # not on PyPI (nor any git URL) yet: `pip install trl-safediffusion`, with or without quotes or extras, fails
    assert _hits(_docs(), r"pip install\s+['\"]?trl-safediffusion") == []
    assert _hits(_docs(), r"pip install\s+['\"]?git\+") == []
    # the installed huggingface_hub has no `huggingface-cli`; its CLI is `hf` (`hf auth login`)
    assert _hits(_docs(), r"huggingface-cli") == []
    assert _hits(_docs(), r"hf auth login")  # the login step is still documented
    assert _hits(_docs(), r"pip install -e '\.\[")  # and the install from the checkout


def test_the_installed_hub_cli_is_hf():
    import shutil
    import sys

    bin_dir = os.path.dirname(sys.executable)
    assert os.path.exists(os.path.join(bin_dir, "hf")) or shutil.which("hf")


def test_user_facing_text_names_no_issue_numbers():
    paths = _docs() + [os.path.join(REPO, "Makefile")]
    for folder in ("src", "examples", "benchmarks", "research", "scripts"):
        for path in glob.glob(os.path.join(REPO, folder, "**", "*"), recursive=True):
            if os.path.isfile(path) and "assets" not in path.split(os.sep) and path.endswith(
                    (".py", ".md", ".json", ".yaml", ".yml", ".txt", ".cfg")):
                paths.append(path)
    assert len(paths) > 30
    assert _hits(paths, r"\bissues?\s*#?\s*\d+|\(#\d+\)") == []
