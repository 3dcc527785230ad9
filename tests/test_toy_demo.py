"""A shortened toy demo: artefacts exist and the reported metrics are what the exact detectors measure."""

import json
import os

import pytest

from trl_safediffusion.toy.demo import EVAL_SPLITS, DemoSettings, _evaluate, run_demo


def _assets_present():
    from trl_safediffusion.toy.clip import TOY_CLIP_DIR
    from trl_safediffusion.toy.pipeline import TOY_PIPELINE_DIR

    return os.path.isfile(os.path.join(TOY_PIPELINE_DIR, "model_index.json")) and os.path.isdir(TOY_CLIP_DIR)


@pytest.mark.skipif(not _assets_present(), reason="toy assets not shipped in this checkout")
def test_short_demo_writes_artefacts_and_detector_metrics(tmp_path):
    settings = DemoSettings(epochs=2, eval_images=12, sample_batch_size=16, sample_num_batches_per_epoch=1,
                            train_batch_size=16, num_generations=8, eval_steps=8, sample_num_steps=6,
                            timesteps_per_forward=5, stage2_epochs=1, safe_anchors=" blue shapes,, yellow shapes ")
    out = str(tmp_path / "demo")
    result = run_demo(out, settings, device="cpu")
    for name in ("metrics.json", "before_after.png", "reward_curve.png", "alpha_sweep.png", "model/model_index.json", "model/README.md"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["settings"]["epochs"] == 2 and len(saved["training_log"]) == 2
    assert saved["reward"]["anchors"]["safe"] == ["blue shapes", "yellow shapes"]  # the setting reached the reward
    # the default structure anchor reached the trainer: its recipe, in the model card
    assert settings.structure_weight > 0
    with open(os.path.join(out, "model", "README.md"), encoding="utf-8") as f:
        assert f"Structure anchor weight on unsafe prompts | {settings.structure_weight:g}" in f.read()
    # the guidance curriculum: the last stage2_epochs sample at stage2_guidance_scale
    assert [r["sample_guidance_scale"] for r in saved["training_log"]] == [
        settings.train_guidance_scale, settings.stage2_guidance_scale]
    for split in EVAL_SPLITS:
        for key in ("unsafe_rate", "all_correct", "shape", "count", "colour", "steering_reward_mean"):
            assert 0.0 <= saved["before"][split][key] <= 1.0 or key == "steering_reward_mean"
        assert saved["before"][split]["n"] == 12
    # the "after" metrics are exactly what the detectors measure on the saved model's images (same prompts and seeds)
    from diffusers import StableDiffusionPipeline

    trained = StableDiffusionPipeline.from_pretrained(os.path.join(out, "model"))
    trained.set_progress_bar_config(disable=True)
    again, _ = _evaluate(trained, settings)
    for split in EVAL_SPLITS:
        for key in ("unsafe_rate", "all_correct", "shape", "count", "colour"):
            assert again[split][key] == pytest.approx(result["after"][split][key]), (split, key)


def test_demo_anchors_default_to_the_toy_anchors():
    from trl_safediffusion.toy.clip import TOY_SAFE_ANCHORS, TOY_UNSAFE_ANCHORS
    from trl_safediffusion.toy.demo import demo_anchors

    assert demo_anchors(DemoSettings()) == {"safe": list(TOY_SAFE_ANCHORS), "unsafe": list(TOY_UNSAFE_ANCHORS)}
    assert demo_anchors(DemoSettings(safe_anchors=" , ")) == demo_anchors(DemoSettings())
    assert demo_anchors(DemoSettings(safe_anchors="cyan shapes"))["safe"] == ["cyan shapes"]


def test_trainable_modules_freeze_the_rest_and_name_bad_input():
    from trl_safediffusion.pipelines import DefaultDDPOStableDiffusionPipeline
    from trl_safediffusion.testing_utils import tiny_sd_pipeline

    policy = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=False,
                                                trainable_modules="attn2.to_k, attn2.to_v")
    unet = policy.unet
    trained = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trained and all("attn2.to_k" in n or "attn2.to_v" in n for n in trained)
    assert len(trained) < len(list(unet.parameters()))
    assert {id(p) for p in policy.trainable_parameters()} == {id(p) for n, p in unet.named_parameters() if n in trained}
    with pytest.raises(ValueError, match=r"trainable_modules=\['nothing'\]"):
        DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=False, trainable_modules=["nothing"])
    with pytest.raises(ValueError, match="lora_target_modules"):
        DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True, trainable_modules="attn2")


def test_stage2_epochs_must_fit_in_epochs(tmp_path):
    with pytest.raises(ValueError, match="stage2_epochs"):
        run_demo(str(tmp_path / "demo"), DemoSettings(epochs=3, stage2_epochs=4), device="cpu")


def test_bad_trainer_settings_fail_before_the_first_evaluation(tmp_path, monkeypatch):
    import trl_safediffusion.toy.demo as demo

    def evaluate_called(*args, **kwargs):
        raise AssertionError("the pretrained model was evaluated before the trainer settings were checked")

    # the first evaluation samples hundreds of images (minutes); a bad setting must not cost them
    monkeypatch.setattr(demo, "_evaluate", evaluate_called)
    with pytest.raises(ValueError, match="train_batch_size"):
        run_demo(str(tmp_path / "demo"), DemoSettings(sample_batch_size=16, train_batch_size=32), device="cpu")


@pytest.mark.skipif(not _assets_present(), reason="toy assets not shipped in this checkout")
def test_demo_and_toy_evaluations_show_a_progress_bar(capsys):
    from trl_safediffusion.toy.evaluate import evaluate_pipeline
    from trl_safediffusion.toy.pipeline import load_toy_pipeline

    pipe = load_toy_pipeline(device="cpu")
    pipe.set_progress_bar_config(disable=True)
    settings = DemoSettings(eval_images=2, eval_steps=2)
    capsys.readouterr()
    _evaluate(pipe, settings, desc="evaluating the pretrained model", progress=True)
    err = capsys.readouterr().err
    # one bar over every image of every split, advanced batch by batch
    assert "evaluating the pretrained model" in err and f"{2 * len(EVAL_SPLITS)}/{2 * len(EVAL_SPLITS)}" in err
    _evaluate(pipe, settings, progress=False)
    assert "evaluating" not in capsys.readouterr().err
    evaluate_pipeline(pipe, images_per_split=2, splits=("eval_red", "eval_benign"), num_inference_steps=2,
                      progress=True)
    err = capsys.readouterr().err
    assert "evaluating" in err and "4/4" in err
