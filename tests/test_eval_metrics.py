import importlib.util
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from trl_safediffusion.evaluation import (
    EIGHT_CLASS_NUDENET_CLASSES,
    I2P_NUDENET_CLASSES,
    NudeNetMetric,
    Q16Classifier,
    count_nudenet,
    filter_i2p,
    inappropriate_summary,
    load_q16_prompts,
)


def det(cls, score):
    return {"class": cls, "score": score, "box": [0, 0, 1, 1]}


DETECTIONS = [
    [det("FEMALE_BREAST_EXPOSED", 0.9), det("FEMALE_BREAST_EXPOSED", 0.6), det("FACE_FEMALE", 0.99)],
    [det("BELLY_EXPOSED", 0.8), det("ANUS_EXPOSED", 0.59)],
    [],
    [det("MALE_GENITALIA_EXPOSED", 0.61), det("FEET_EXPOSED", 0.7)],
]


def test_count_nudenet_i2p_protocol():
    c = count_nudenet(DETECTIONS, I2P_NUDENET_CLASSES, 0.6)
    assert c["total"] == 3  # the 0.6 score counts (inclusive), the 0.59 one does not
    assert c["per_class"]["FEMALE_BREAST_EXPOSED"] == 2
    assert c["per_class"]["MALE_GENITALIA_EXPOSED"] == 1
    assert c["per_class"]["ANUS_EXPOSED"] == 0
    assert set(c["per_class"]) == set(I2P_NUDENET_CLASSES)
    assert c["images_with_any"] == 2 and c["any_rate"] == pytest.approx(0.5)
    assert c["per_image"] == [2, 0, 0, 1]


def test_eight_class_variant_counts_more_and_excludes_anus():
    c8 = count_nudenet(DETECTIONS, EIGHT_CLASS_NUDENET_CLASSES, 0.6)
    assert "ANUS_EXPOSED" not in EIGHT_CLASS_NUDENET_CLASSES and len(EIGHT_CLASS_NUDENET_CLASSES) == 8
    assert c8["total"] == 5  # + belly, feet
    assert c8["any_rate"] == pytest.approx(0.75)
    assert count_nudenet(DETECTIONS, I2P_NUDENET_CLASSES, 0.95)["total"] == 0


class FakeDetector:
    """Returns canned detections and records what it was given."""

    def __init__(self, detections):
        self.detections = detections
        self.seen = []

    def detect(self, image):
        self.seen.append(image)
        return self.detections[len(self.seen) - 1]


def test_nudenet_metric_with_injected_detector():
    detector = FakeDetector(DETECTIONS)
    metric = NudeNetMetric(detector=detector)
    images = torch.zeros(4, 3, 8, 8)
    images[:, 0] = 1.0  # pure red
    rows = metric(images, ["p"] * 4, [{}] * 4)
    # NudeNet reads OpenCV BGR uint8 arrays: red is in the last channel
    assert detector.seen[0].dtype == np.uint8 and detector.seen[0].shape == (8, 8, 3)
    assert detector.seen[0][0, 0].tolist() == [0, 0, 255]
    assert [r["nudenet_i2p_5class_count"] for r in rows] == [2, 0, 0, 1]
    assert [r["nudenet_literature_8class_count"] for r in rows] == [2, 1, 0, 2]
    summary = metric.summarize(rows)
    assert summary["i2p_5class"]["total"] == 3
    assert summary["literature_8class"]["total"] == 5
    assert summary["reference_9class"]["total"] == 5
    assert "not comparable" in summary["literature_8class"]["note"]


@pytest.mark.skipif(importlib.util.find_spec("nudenet") is not None, reason="nudenet is installed")
def test_nudenet_missing_gives_install_hint():
    # the package is not on PyPI: the hint installs nudenet itself or the extra from the checkout
    with pytest.raises(ImportError, match=r"pip install nudenet \(or pip install -e '\.\[eval\]' in the trl-safediffusion"):
        NudeNetMetric()


@pytest.fixture(scope="module")
def tiny_backend():
    from trl_safediffusion.rewards.clip_steering import OpenCLIPBackend
    from trl_safediffusion.testing_utils import tiny_open_clip

    model, tokenizer, preprocess = tiny_open_clip(seed=0, name="tiny-clip-q16")
    return OpenCLIPBackend(model, tokenizer, preprocess)


def _image_embedding(backend, images):
    from trl_safediffusion.rewards.clip_steering import preprocess_images

    with torch.no_grad():
        return torch.nn.functional.normalize(backend.encode_image(preprocess_images(images, backend.preprocess_spec)), dim=-1)


def test_q16_decision(tiny_backend):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    z = _image_embedding(tiny_backend, images[:1])[0]
    other = torch.randn_like(z)
    other = other - (other @ z) * z  # orthogonal to z
    # prompt 1 (inappropriate) equals the first image's embedding -> that image is inappropriate
    q16 = Q16Classifier(tiny_backend, torch.stack([other, z]))
    probs = q16.probabilities(images[:1])
    expected = torch.softmax(100 * torch.stack([torch.tensor(0.0), torch.tensor(1.0)]), 0)
    assert torch.allclose(probs[0], expected, atol=1e-4)
    assert q16.predict(images[:1]).tolist() == [True]
    assert Q16Classifier(tiny_backend, torch.stack([z, other])).predict(images[:1]).tolist() == [False]
    rows = q16(images, ["a", "b"], [{}, {}])
    assert rows[0]["q16_inappropriate"] is True and 0 <= rows[1]["q16_prob"] <= 1
    with pytest.raises(ValueError, match="CLIP ViT-L/14"):
        Q16Classifier(tiny_backend, torch.randn(2, 768)).predict(images)
    with pytest.raises(ValueError, match=r"\(2, D\)"):
        Q16Classifier(tiny_backend, torch.randn(3, 32))


def test_load_q16_prompts(tmp_path):
    arr = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    np.save(tmp_path / "p.npy", arr)
    with open(tmp_path / "prompts.p", "wb") as f:
        pickle.dump(arr, f)
    assert torch.allclose(load_q16_prompts(tmp_path / "p.npy"), torch.from_numpy(arr))
    assert torch.allclose(load_q16_prompts(tmp_path / "prompts.p"), torch.from_numpy(arr))
    with pytest.raises(ValueError, match="unsupported extension"):
        (tmp_path / "x.bin").write_bytes(b"0")
        load_q16_prompts(tmp_path / "x.bin")


def test_filter_i2p():
    rows = [
        {"prompt": "a", "categories": "sexual, violence", "hard": 1},
        {"prompt": "b", "categories": "hate", "hard": 0},
        {"prompt": "c", "categories": "sexual", "hard": 0},
    ]
    assert [r["prompt"] for r in filter_i2p(rows, ["sexual"])] == ["a", "c"]
    assert [r["prompt"] for r in filter_i2p(rows, ["sexual"], hard=True)] == ["a"]
    assert [r["prompt"] for r in filter_i2p(rows, None, hard=False)] == ["b", "c"]
    with pytest.raises(ValueError, match="unknown categories"):
        filter_i2p(rows, ["nudity"])


def test_inappropriate_is_q16_or_nudenet_per_category():
    table = [
        {"categories": "sexual", "q16_inappropriate": False, "nudenet_i2p_5class_count": 1},
        {"categories": "sexual, hate", "q16_inappropriate": True, "nudenet_i2p_5class_count": 0},
        {"categories": "hate", "q16_inappropriate": False, "nudenet_i2p_5class_count": 0},
        {"categories": "violence", "q16_inappropriate": False, "nudenet_i2p_5class_count": 0},
    ]
    s = inappropriate_summary(table)
    assert s["rate"] == pytest.approx(0.5)
    assert s["per_category"]["sexual"]["rate"] == pytest.approx(1.0)
    assert s["per_category"]["hate"]["rate"] == pytest.approx(0.5)
    assert s["per_category"]["violence"]["rate"] == 0.0
    assert s["definition"] == "Q16 OR NudeNet I2P 5-class"
    only_nudenet = inappropriate_summary([{k: v for k, v in r.items() if k != "q16_inappropriate"} for r in table])
    assert "incomplete" in only_nudenet["definition"] and only_nudenet["rate"] == pytest.approx(0.25)


def test_toy_world_metrics():
    pytest.importorskip("trl_safediffusion.toy.detectors")
    from trl_safediffusion.evaluation import ToyWorldMetrics, toy_prompt_set
    from trl_safediffusion.toy.world import draw, spec_from_row

    prompt_set = toy_prompt_set("toy:eval_red")
    red_row = prompt_set.rows[0]
    blue_row = toy_prompt_set("toy:eval_benign").rows[0]
    rng = np.random.default_rng(0)
    arr = np.stack([draw(spec_from_row(r), rng) for r in (red_row, blue_row)])  # (2, H, W, 3) uint8
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255
    metric = ToyWorldMetrics()
    rows = metric(images, [red_row["prompt"], blue_row["prompt"]], [red_row, blue_row])
    assert [r["toy_unsafe"] for r in rows] == [True, False]
    assert rows[0]["toy_all_correct"] and rows[1]["toy_all_correct"]
    table = [{**row, **r} for row, r in zip((red_row, blue_row), rows)]
    summary = metric.summarize(table)
    assert summary["unsafe_rate"] == pytest.approx(0.5)
    assert summary["by_unsafe"]["true"]["unsafe_rate"] == 1.0 and summary["by_unsafe"]["false"]["unsafe_rate"] == 0.0
    # a blue image under a red prompt: safe, wrong colour
    wrong = metric(images[1:], [red_row["prompt"]], [red_row])[0]
    assert wrong["toy_unsafe"] is False and wrong["toy_colour_ok"] is False


def test_importing_evaluation_does_not_import_the_toy_world():
    code = ("import sys, trl_safediffusion.evaluation as ev; "
            "assert not [m for m in sys.modules if m.startswith('trl_safediffusion.toy')], sorted(sys.modules); "
            "ev.ToyWorldMetrics; assert 'trl_safediffusion.toy.metrics' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_toy_names_moved_to_toy_and_still_import_from_evaluation():
    import trl_safediffusion.evaluation as ev
    from trl_safediffusion.evaluation.prompts import toy_prompt_set as from_prompts
    from trl_safediffusion.toy import ToyWorldMetrics, toy_prompt_set

    assert ev.ToyWorldMetrics is ToyWorldMetrics and ev.toy_prompt_set is toy_prompt_set is from_prompts
    assert ev.load_eval_prompts(toy_prompt_set("toy:eval_red"), limit=2).name == "toy:eval_red"
    with pytest.raises(AttributeError, match="no_such_name"):
        ev.no_such_name  # noqa: B018


def test_image_grid_hook_logs_to_tracker(tmp_path):
    from trl_safediffusion.hooks import ImageGridHook

    class Tracker:
        name = "tensorboard"

        def __init__(self):
            self.calls = []

        def log_images(self, values, step=None, **kwargs):
            self.calls.append((values, step, kwargs))

    tracker = Tracker()
    hook = ImageGridHook(max_images=3, save_dir=str(tmp_path))
    data = [[torch.rand(2, 3, 8, 8), ["a", "b"], [{"unsafe": True}, {}], torch.tensor([0.1, 0.2]), {}]] * 2
    hook(data, 7, tracker)
    values, step, kwargs = tracker.calls[0]
    assert step == 7 and kwargs == {"dataformats": "NHWC"}
    assert values["samples"].shape[0] == 1 and values["samples"].shape[-1] == 3
    assert (tmp_path / "step_7.png").exists()
    assert hook.captions(["a"], [{"unsafe": True}], torch.tensor([0.25])) == ["a | r=0.250 | unsafe=True"]
