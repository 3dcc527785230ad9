"""Model publishing against the fake Hub: full pipeline and LoRA round trips through the real diffusers /
huggingface_hub clients, and the model card."""

from __future__ import annotations

import os

import torch

from conftest_hub import fake_hub, hub_token  # noqa: F401
from trl_safediffusion.hub import (
    DDPO_CITATION,
    GRPO_CITATION,
    LORA_WEIGHT_NAME,
    SAFEDIFFUSION_R1_CITATION,
    SafeDiffusionCardInfo,
    build_model_card,
    push_folder_to_hub,
    save_pipeline_for_hub,
    write_training_model_card,
)
from trl_safediffusion.testing_utils import tiny_sd_pipeline

REPO = "tester/tiny-safe-sd"


def _card_info(lora: bool) -> SafeDiffusionCardInfo:
    return SafeDiffusionCardInfo(
        base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        license="creativeml-openrail-m",
        lora=lora,
        recipe={"sample_num_steps": 50, "sample_eta": 1.0, "sample_guidance_scale": 5.0, "num_generations": 16,
                "train_learning_rate": 1e-5, "num_epochs": 300, "hub_token": "hf_shouldNeverAppear12345"},
        reward={"name": "clip_steering", "backend": "open_clip", "model": "ViT-H-14 (HPSv2.1)", "alpha": 0.5,
                "mode": "translate", "safe_anchors": ["a safe", "appropriate image"],
                "unsafe_anchors": ["pornographic material"]},
        eval_results={"I2P": {"inappropriate rate": 0.1807, "nudenet detections": 15.0}},
        datasets=["ItsMaxNorm/SafeDiffusion-R1-dataset"],
        repo_id=REPO,
        trainer="SafeDDPOGRPOTrainer",
        method="post-trained with online GRPO against a CLIP steering reward",
        tags=["safediffusion-r1", "grpo", "safety"],
        citations=[SAFEDIFFUSION_R1_CITATION, DDPO_CITATION, GRPO_CITATION],
    )


def _trained_tiny_pipeline():
    """The tiny pipeline with its UNet perturbed, standing in for a trained one."""
    pipe = tiny_sd_pipeline(seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=generator))
    return pipe


def _add_lora(pipe, rank: int = 4, alpha: float = 8.0):
    from peft import LoraConfig

    pipe.unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                   target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:  # zero at init: make the adapter change the output
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    return pipe


def _unet_output(unet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    hidden = torch.randn(2, 77, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 500]), encoder_hidden_states=hidden).sample


def test_full_pipeline_round_trip(fake_hub, tmp_path):  # noqa: F811
    from diffusers import StableDiffusionPipeline

    pipe = _trained_tiny_pipeline()
    folder = str(tmp_path / "model")
    save_pipeline_for_hub(pipe, folder, lora=False, card_info=_card_info(lora=False))
    assert os.path.isfile(os.path.join(folder, "README.md"))
    assert not [f for _, _, fs in os.walk(folder) for f in fs if f.endswith((".bin", ".pt", ".pth"))]

    url = push_folder_to_hub(folder, REPO, commit_message="tiny")
    assert REPO in url
    assert "unet/diffusion_pytorch_model.safetensors" in fake_hub.repo(REPO).files()

    loaded = StableDiffusionPipeline.from_pretrained(REPO, safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        expected = getattr(pipe, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(expected[key], got[key]), f"{name}.{key} differs after the Hub round trip"
    assert any(path.startswith("/api/models/") for _, path in fake_hub.requests)


def test_lora_round_trip_reproduces_the_unet_exactly(fake_hub, tmp_path):  # noqa: F811
    from diffusers import StableDiffusionPipeline

    pipe = _add_lora(tiny_sd_pipeline(seed=0))
    base_out = _unet_output(tiny_sd_pipeline(seed=0).unet)
    trained_out = _unet_output(pipe.unet)
    assert not torch.allclose(base_out, trained_out)  # the adapter does something

    folder = str(tmp_path / "lora")
    save_pipeline_for_hub(pipe, folder, lora=True, card_info=_card_info(lora=True))
    assert sorted(os.listdir(folder)) == ["README.md", LORA_WEIGHT_NAME]
    push_folder_to_hub(folder, REPO)

    fresh = tiny_sd_pipeline(seed=0)
    fresh.load_lora_weights(REPO)
    trained_lora = {k: v for k, v in pipe.unet.state_dict().items() if "lora_" in k}
    loaded_lora = {k: v for k, v in fresh.unet.state_dict().items() if "lora_" in k}
    assert len(trained_lora) == len(loaded_lora) > 0
    # diffusers names the loaded adapter "default_0": compare by position in the (same) module order
    for (k1, v1), (k2, v2) in zip(sorted(trained_lora.items()), sorted(loaded_lora.items())):
        assert k1.replace(".default.", ".") == k2.replace(".default_0.", "."), (k1, k2)
        assert torch.equal(v1, v2), k1
    assert torch.equal(_unet_output(fresh.unet), trained_out)

    # the fused option: a full pipeline whose UNet equals base + adapter
    fused_folder = str(tmp_path / "fused")
    save_pipeline_for_hub(pipe, fused_folder, lora=True, fuse=True)
    fused = StableDiffusionPipeline.from_pretrained(fused_folder, safety_checker=None)
    torch.testing.assert_close(_unet_output(fused.unet), trained_out, rtol=1e-5, atol=1e-5)
    assert not any("lora" in k for k in fused.unet.state_dict())


def test_model_card_parses_and_holds_the_fields(tmp_path):
    from huggingface_hub import ModelCard

    path = write_training_model_card(str(tmp_path), _card_info(lora=True))
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "diffusers"
    assert data.pipeline_tag == "text-to-image"
    assert data.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert data.license == "creativeml-openrail-m"
    assert {"trl", "trl-safediffusion", "safediffusion-r1", "grpo", "safety", "lora"} <= set(data.tags)
    assert data.datasets == ["ItsMaxNorm/SafeDiffusion-R1-dataset"]
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in data.eval_results}
    assert results == {("I2P", "inappropriate rate"): 0.1807, ("I2P", "nudenet detections"): 15.0}
    assert data.eval_results[0].dataset_type == "AIML-TUDA/i2p"
    text = card.text
    for expected in ("load_lora_weights", "Group size | 16", "DDIM eta | 1", "Steering strength (alpha) | 0.5", "normalize(E_txt(p) + alpha * v_safe)",
                     "pornographic material", "| I2P | 0.1807 | 15 |", "## Limitations", "2605.18719", "DDPO",
                     "Training Diffusion Models with Reinforcement Learning", "DeepSeekMath"):
        assert expected in text, expected
    assert "hf_shouldNeverAppear" not in open(path).read()


def test_card_inherits_the_license_of_a_local_base(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    card = build_model_card(SafeDiffusionCardInfo(base_model=str(base), license=None))
    assert card.data.license is None  # build_model_card reports what it is given
    path = write_training_model_card(str(tmp_path / "out"), {"base_model": str(base), "recipe": {}}, lora=False)
    from huggingface_hub import ModelCard

    assert ModelCard.load(path).data.license == "apache-2.0"
    assert "from_pretrained" in ModelCard.load(path).text


def test_card_info_from_a_trainer_dict_keeps_unknown_keys_as_run_details():
    info = SafeDiffusionCardInfo.from_dict(
        {"base_model": "x", "dataset_size": 128, "datasets": [None], "recipe": {"lora": True}, "license": None},
        lora=True,
    )
    assert info.extra == {"dataset_size": 128} and info.lora and info.license is None
    card = build_model_card(info)
    assert "| dataset_size | 128 |" in card.text
    assert card.data.datasets is None  # unnamed in-memory datasets are not listed


def test_a_library_pipeline_is_saved_by_its_own_save_pretrained(tmp_path):
    import pytest
    from safetensors.torch import load_file

    from trl_safediffusion import DefaultDDPOStableDiffusionPipeline

    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(seed=0), use_lora=True)
    expected = str(tmp_path / "by-the-pipeline")
    pipe.save_pretrained(expected)
    folder = save_pipeline_for_hub(pipe, str(tmp_path / "lora"), card_info=_card_info(lora=True))
    assert sorted(os.listdir(folder)) == ["README.md", LORA_WEIGHT_NAME]
    ours, theirs = (load_file(os.path.join(d, LORA_WEIGHT_NAME)) for d in (folder, expected))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert "load_lora_weights" in open(os.path.join(folder, "README.md")).read()

    fused = save_pipeline_for_hub(pipe, str(tmp_path / "fused"), fuse=True)
    assert os.path.isfile(os.path.join(fused, "unet", "diffusion_pytorch_model.safetensors"))
    assert "load_lora_weights" not in open(os.path.join(fused, "README.md")).read()
    with pytest.raises(ValueError, match="use_lora=True"):
        save_pipeline_for_hub(pipe, str(tmp_path / "full"), lora=False)


def test_a_diffusers_lora_adapter_not_named_default_is_refused(tmp_path):
    import pytest
    from peft import LoraConfig

    pipe = tiny_sd_pipeline(seed=0)
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"]), adapter_name="mine")
    with pytest.raises(ValueError, match="adapter_name='mine'"):
        save_pipeline_for_hub(pipe, str(tmp_path / "lora"), lora=True, adapter_name="mine")
    with pytest.raises(ValueError, match="no LoRA adapter 'default'"):
        save_pipeline_for_hub(pipe, str(tmp_path / "lora"), lora=True)
