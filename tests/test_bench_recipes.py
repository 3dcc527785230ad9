"""benchmarks/bench_recipes.py: each family's paper and fast recipe, trained through the CLI's parser on its tiny
pipeline, does the model work docs/efficiency.md's table says it does (counted on the denoiser, not assumed)."""

import importlib.util
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "bench_recipes.py")
SMALL = ["sample_batch_size=2", "sample_num_batches_per_epoch=1", "num_generations=2", "train_batch_size=2",
         "train_gradient_accumulation_steps=1", "mixed_precision=no"]


def _module():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    spec = importlib.util.spec_from_file_location("bench_recipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documented_counts(recipe_file: str) -> tuple[int, int, int]:
    """(sampling, training, per sample) of the recipe's row in docs/efficiency.md's "Counting the work" table."""
    with open(os.path.join(REPO, "docs", "efficiency.md")) as f:
        row = next(line for line in f if line.startswith(f"| `{recipe_file}`"))
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    sampling, training = (int(re.findall(r"\d+", cell)[-1]) for cell in cells[1:3])  # "50 steps x 2 = 100", "16"
    return sampling, training, int(cells[3])


@pytest.mark.parametrize("family", ["sd15", "sdxl_lora", "sd35_medium_lora", "flux_dev_lora"])
def test_each_recipe_pair_does_the_work_the_efficiency_table_counts(tmp_path, family):
    record = _module().main(["--size", "tiny", "--family", family, "--epochs", "1", "--set", *SMALL,
                             "--out", str(tmp_path / "r.json")])
    assert os.path.isfile(tmp_path / "r.json") and os.path.isfile(tmp_path / "r.txt")
    for name, suffix in (("paper", ""), ("fast", "_fast")):
        measured = record["results"][name]
        sampling, training, per_sample = _documented_counts(f"safediffusion_r1_{family}{suffix}.yaml")
        assert measured["rows_without_grad_per_sample"] == sampling, (name, measured)
        assert 3 * measured["rows_with_grad_per_sample"] == training, (name, measured)
        assert measured["forward_equivalents_per_sample"] == per_sample
        assert measured["seconds_per_epoch"] > 0 and measured["peak_rss_gib"] > 0
    paper, fast = record["results"]["paper"], record["results"]["fast"]
    assert fast["settings"]["sample_sde_window"] == "fixed" and paper["settings"]["sample_sde_window"] != "fixed"


@pytest.mark.parametrize("argv, message", [
    (["--size", "full", "--family", "flux_dev_lora"], "--size full builds SD v1.5's architecture only"),
    (["--set", "sample_batch_size"], "--set takes FIELD=VALUE pairs, got 'sample_batch_size'"),
    (["--recipes", "paper,slow"], "--recipes takes paper and/or fast, got slow"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
])
def test_bad_arguments_are_one_line_errors_naming_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _module().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
