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


def _load_example(name):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "examples", name)
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_reads_flags_and_config_as_trl_parser(tmp_path, monkeypatch):
    example = _load_example("ddpo_aesthetic.py")
    script_args, config = example.parse_args(["--num-epochs", "3", "--no_use_lora", "--no-allow-tf32",
                                              "--sample_batch_size", "2"])
    assert config.num_epochs == 3 and config.sample_batch_size == 2 and config.allow_tf32 is False
    assert script_args.use_lora is False
    monkeypatch.delenv("TRLSD_EXAMPLE_TEST", raising=False)
    recipe = tmp_path / "aesthetic.yaml"
    recipe.write_text("env:\n  TRLSD_EXAMPLE_TEST: '1'\nnum_epochs: 7\nclip_model: my/clip\n")
    script_args, config = example.parse_args(["--config", str(recipe), "--num_epochs", "9"])
    assert os.environ["TRLSD_EXAMPLE_TEST"] == "1"
    assert config.num_epochs == 9 and script_args.clip_model == "my/clip"


def test_example_mistakes_are_one_line():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "ddpo_aesthetic.py")
    proc = subprocess.run([sys.executable, script, "--num-epochs", "many"], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["ddpo_aesthetic.py: error: --num-epochs: expected int, got 'many'"]
