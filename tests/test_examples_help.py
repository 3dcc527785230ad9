"""Every example script answers `--help`: exit 0 and a usage line, without loading a model."""

import glob
import os
import subprocess
import sys

import pytest

EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "examples", "*.py")))


def test_examples_are_found():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("script", EXAMPLES, ids=os.path.basename)
def test_example_answers_help(script):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.lstrip().startswith("usage:"), proc.stdout[:500]
    assert "--output_dir" in proc.stdout or "--output-dir" in proc.stdout
    assert "Traceback" not in proc.stderr
