"""benchmarks/time_to_target.py: the figures it derives from its evaluations, and a tiny end-to-end run."""

import importlib.util
import json
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "time_to_target.py")


def _module():
    spec = importlib.util.spec_from_file_location("time_to_target", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def _evaluation(epoch, fwd, cpu, red, met):
    return {"epoch": epoch, "forward_equivalents": fwd, "cpu_seconds": cpu, "targets_met": met,
            "summary": {"unsafe_rate_red": red}}


def _result(fast_evals, paper_evals, default_evals):
    return {"recipes": {"fast": {"evaluations": fast_evals}, "paper": {"evaluations": paper_evals},
                        "default": {"evaluations": default_evals}}}


def test_ratios_are_compute_to_target_and_lower_bounds_when_a_recipe_never_reaches():
    ttt = _module()
    result = ttt.summarise(_result(
        [_evaluation(5, 1000, 10.0, 0.5, False), _evaluation(10, 2000, 20.0, 0.08, True)],
        [_evaluation(5, 4000, 50.0, 0.9, False), _evaluation(10, 8000, 100.0, 0.9, False),
         _evaluation(15, 12000, 150.0, 0.85, False)],
        [_evaluation(5, 1500, 12.0, 0.09, False), _evaluation(10, 3000, 24.0, 0.05, True),
         _evaluation(15, 4500, 36.0, 0.04, True)],
    ))
    assert result["fast_reached_targets"] is True
    assert result["ratio_vs_default"] == pytest.approx(3000 / 2000)  # the first evaluation that met them
    assert result["ratio_vs_default_cpu_seconds"] == pytest.approx(24.0 / 20.0)
    assert result["default_reached_targets"] is True and result["ratio_vs_default_is_lower_bound"] is False
    assert result["ratio_vs_paper"] == pytest.approx(12000 / 2000)  # all it spent: a lower bound
    assert result["paper_reached_targets"] is False and result["ratio_vs_paper_is_lower_bound"] is True
    # the unsafe-only target: default reached red <= 10% first at epoch 5, fast at epoch 10; paper never
    assert result["unsafe_target"]["default"]["epoch"] == 5 and result["unsafe_target"]["paper"] is None
    assert result["unsafe_ratio_vs_default"] == pytest.approx(1500 / 2000)
    assert "unsafe_ratio_vs_paper" not in result


def test_no_ratio_when_the_fast_recipe_never_reaches():
    ttt = _module()
    result = ttt.summarise(_result([_evaluation(5, 1000, 10.0, 0.5, False)],
                                   [_evaluation(5, 4000, 50.0, 0.9, False)],
                                   [_evaluation(5, 1500, 12.0, 0.5, True)]))
    assert result["fast_reached_targets"] is False
    assert result["ratio_vs_paper"] is None and result["ratio_vs_default"] is None
    assert any("n/a" in line for line in ttt.summary_lines(result))


def test_tiny_run_writes_the_json_and_its_log(tmp_path):
    """Two small recipes (16 rollouts, 4 steps), one epoch each, 8 evaluation images: the json holds per-recipe
    compute counted by the hook (sampling rows + 3x the trained rows) and the log holds the printed lines."""
    ttt = _module()
    base = open(os.path.join(REPO, "examples", "recipes", "toy_fast.yaml")).read()
    small = {"sample_batch_size": 16, "train_batch_size": 16, "sample_num_steps": 4, "sample_sde_window_size": 2,
             "train_timestep_fraction": 0.5, "num_epochs": 2, "stage2_epochs": 1}
    for key, value in small.items():
        base = re.sub(rf"^{key}: .*$", f"{key}: {value}", base, flags=re.M)
    recipe = tmp_path / "small.yaml"
    recipe.write_text(base)
    out = tmp_path / "ttt.json"
    ttt.main(["--recipes", "fast,default", "--recipe", f"fast={recipe}", "--recipe", f"default={recipe}",
              "--max-epochs", "1", "--every", "1", "--eval-images", "8", "--threads", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["complete"] is True and set(result["recipes"]) == {"fast", "default"}
    fast = result["recipes"]["fast"]
    assert [e["epoch"] for e in fast["evaluations"]] == [1]
    # 16 rollouts x 4 steps x 2 (CFG) sampling rows; 16 rollouts x 1 trained step x 2 (CFG) x 3 with gradient;
    # the KL's frozen reference: the benign half of the rollouts, 1 step, 2 rows, forward only
    sampled, trained = 16 * 4 * 2, 16 * 1 * 2 * 3
    assert sampled + trained <= fast["evaluations"][0]["forward_equivalents"] <= sampled + trained + 16 * 2
    assert result["recipes"]["default"]["evaluations"][0]["forward_equivalents"] == \
        fast["evaluations"][0]["forward_equivalents"]  # same recipe, same seed: same work
    lines = (tmp_path / "ttt.txt").read_text().splitlines()
    assert lines[0].startswith("pretrained model evaluated (8 images per split")
    assert any(line.startswith("fast     epoch   1") for line in lines)
    assert lines[-1].startswith("wrote ")
    # --reuse: a second run trains only the fast recipe and takes the default's evaluations from the first file; a
    # recipe trains alone, so the fast recipe's figures are those of the shared run
    again = tmp_path / "again.json"
    ttt.main(["--recipes", "fast", "--recipe", f"fast={recipe}", "--reuse", str(out), "--max-epochs", "1",
              "--every", "1", "--eval-images", "8", "--threads", "1", "--out", str(again)])
    second = json.loads(again.read_text())
    assert set(second["recipes"]) == {"fast", "default"}
    assert second["recipes"]["default"]["reused_from"] == os.path.relpath(str(out), REPO)
    assert second["recipes"]["default"]["evaluations"] == result["recipes"]["default"]["evaluations"]
    assert "reused_from" not in second["recipes"]["fast"]
    first_eval, second_eval = fast["evaluations"][0], second["recipes"]["fast"]["evaluations"][0]
    assert second_eval["forward_equivalents"] == first_eval["forward_equivalents"]
    assert second_eval["summary"] == first_eval["summary"]
    # another evaluation size cannot be compared with the file's
    with pytest.raises(SystemExit, match="--reuse .* images_per_split"):
        ttt.main(["--recipes", "fast", "--recipe", f"fast={recipe}", "--reuse", str(out), "--max-epochs", "1",
                  "--every", "1", "--eval-images", "4", "--threads", "1", "--out", str(tmp_path / "x.json")])
