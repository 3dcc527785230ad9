"""Model cards written by the trainers: they say what trained the model (DDPO or SafeDiffusion-R1 GRPO), name the
training prompts (Hub ids with their namespace, local files by name), never put a local path where a Hub id belongs,
take the title from the repo or folder, inherit the base's license and list the framework versions."""

from __future__ import annotations

import os

import pytest
from datasets import Dataset
from huggingface_hub import ModelCard

from conftest import brightness_reward
from conftest_hub import fake_hub, hub_token  # noqa: F401
from trl_safediffusion import (
    DDPOConfig,
    DDPOTrainer,
    DefaultDDPOStableDiffusionPipeline,
    SafeDDPOGRPOConfig,
    SafeDDPOGRPOTrainer,
)
from trl_safediffusion.data import load_prompt_dataset, mix_prompts
from trl_safediffusion.hub import push_prompt_dataset, training_data_sources
from trl_safediffusion.testing_utils import tiny_sd_pipeline

GRPO_STORY = ("grpo", "GRPO", "safediffusion-r1", "SafeDiffusion-R1", "2605.18719", "steering", "DeepSeekMath")


def _local_base(tmp_path, license: str | None = "apache-2.0") -> str:
    """A base pipeline folder on disk, with a model card that states its license."""
    folder = str(tmp_path / "my-local-sd")
    tiny_sd_pipeline(seed=0).save_pretrained(folder, safe_serialization=True)
    if license:
        with open(os.path.join(folder, "README.md"), "w") as f:
            f.write(f"---\nlicense: {license}\n---\n# a base\n")
    return folder


def _ddpo_config(tmp_path, **kw) -> DDPOConfig:
    return DDPOConfig(num_epochs=1, sample_num_steps=2, sample_batch_size=2, train_batch_size=2,
                      mixed_precision="no", save_freq=0, logdir=str(tmp_path / "logs"), **kw)


def _grpo_config(tmp_path, **kw) -> SafeDDPOGRPOConfig:
    base = dict(num_epochs=1, sample_num_steps=2, sample_batch_size=4, sample_num_batches_per_epoch=1,
                train_batch_size=4, num_generations=4, mixed_precision="no", save_freq=0,
                logdir=str(tmp_path / "logs"))
    base.update(kw)
    return SafeDDPOGRPOConfig(**base)


def animal_prompt():
    return "a photo of a cat", {}


def _card(folder: str) -> ModelCard:
    return ModelCard.load(os.path.join(folder, "README.md"))


def test_ddpo_card_says_ddpo_and_keeps_local_paths_out(tmp_path):
    base = _local_base(tmp_path)
    pipe = DefaultDDPOStableDiffusionPipeline(base, use_lora=True)
    trainer = DDPOTrainer(_ddpo_config(tmp_path), brightness_reward, animal_prompt, pipe)
    out = str(tmp_path / "runs" / "aesthetic-lora")
    trainer.save_pretrained(out)

    card = _card(out)
    raw = open(os.path.join(out, "README.md")).read()
    tags = set(card.data.tags)
    assert {"trl", "trl-safediffusion", "ddpo", "diffusers", "text-to-image", "lora"} <= tags
    assert not tags & {"grpo", "safediffusion-r1", "safety"}
    for word in GRPO_STORY:
        assert word not in raw, word
    assert "fine-tuned with DDPO" in card.text and "arxiv.org/abs/2305.13301" in card.text
    assert "Training Diffusion Models with Reinforcement Learning" in card.text  # the DDPO citation
    assert "`DDPOTrainer`" in card.text

    # the local base: never as an absolute path, not in the base_model metadata (a Hub id), license inherited
    assert base not in raw and str(tmp_path) not in raw
    assert card.data.base_model is None
    assert 'from_pretrained("my-local-sd"' in card.text and "my-local-sd (local folder)" in card.text
    assert card.data.license == "apache-2.0"
    # title from the folder, prompts named, framework versions listed
    assert card.text.lstrip().startswith("# aesthetic-lora")
    assert "prompt function `animal_prompt`" in card.text and "not recorded" not in card.text
    from importlib import metadata

    section = card.text.split("## Framework versions", 1)[1]
    for dist, label in (("trl-safediffusion", "trl-safediffusion"), ("trl", "TRL"), ("diffusers", "Diffusers"),
                        ("transformers", "Transformers"), ("peft", "PEFT"), ("torch", "PyTorch"),
                        ("datasets", "Datasets")):
        assert f"- {label}: {metadata.version(dist)}" in section, label


def test_grpo_card_tells_the_safediffusion_story_with_the_steering_reward(tmp_path):
    from reward_fixtures import transformers_parts
    from trl_safediffusion.rewards.clip_steering import CLIPSteeringReward, TransformersCLIPBackend

    model, tokenizer, processor = transformers_parts()
    reward = CLIPSteeringReward(TransformersCLIPBackend(model, tokenizer, processor), anchors="toy-red", alpha=0.5)
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    dataset = Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(4)]})
    trainer = SafeDDPOGRPOTrainer(_grpo_config(tmp_path), reward, pipe, train_dataset=dataset)
    out = str(tmp_path / "grpo-model")
    trainer.save_pretrained(out)

    card = _card(out)
    assert {"grpo", "safediffusion-r1", "safety", "trl", "trl-safediffusion"} <= set(card.data.tags)
    assert "ddpo" not in card.data.tags
    text = card.text
    assert "post-trained with online GRPO" in text and "against a CLIP steering reward" in text
    assert "normalize(E_txt(p) + alpha * v_safe)" in text and "Steering strength (alpha) | 0.5" in text
    for phrase in reward.anchors.safe + reward.anchors.unsafe:  # the anchors, listed one by one
        assert f"- {phrase}" in text
    for citation in ("2605.18719", "Training Diffusion Models with Reinforcement Learning", "DeepSeekMath"):
        assert citation in text
    assert "in-memory `datasets.Dataset` of 4 prompts" in text and card.data.datasets is None


def test_grpo_card_without_the_steering_reward_makes_no_steering_claims(tmp_path):
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    dataset = Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(4)]})
    trainer = SafeDDPOGRPOTrainer(_grpo_config(tmp_path), brightness_reward, pipe, train_dataset=dataset)
    out = str(tmp_path / "bright")
    trainer.save_pretrained(out)
    text = _card(out).text.split("## Citations")[0]
    assert "online GRPO" in text
    assert "steer" not in text.lower() and "NudeNet" not in text and "anchor" not in text


def test_local_prompt_file_is_named_and_kept_out_of_the_metadata(tmp_path):
    prompts = tmp_path / "data" / "my_prompts.txt"
    prompts.parent.mkdir()
    prompts.write_text("a cat\na dog\na bird\na fish\n")
    dataset = load_prompt_dataset(str(prompts))
    assert training_data_sources(dataset.select(range(2))) == ([], ["my_prompts.txt"])  # survives select
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    trainer = SafeDDPOGRPOTrainer(_grpo_config(tmp_path), brightness_reward, pipe, train_dataset=dataset)
    out = str(tmp_path / "out")
    trainer.save_pretrained(out)
    card = _card(out)
    raw = open(os.path.join(out, "README.md")).read()
    assert card.data.datasets is None
    assert "`my_prompts.txt` (local, not on the Hub)" in card.text
    assert str(prompts) not in raw and "not recorded" not in raw


def test_hub_datasets_keep_their_namespace_and_the_title_comes_from_the_repo(fake_hub, tmp_path):  # noqa: F811
    import datasets

    push_prompt_dataset(["a cat", "a dog", "a bird", "a fish"], "tester/animal-prompts",
                        local_dir=str(tmp_path / "prompts"))
    push_prompt_dataset(["a nude person", "a gory scene"], "tester/unsafe-prompts",
                        local_dir=str(tmp_path / "unsafe"))
    cache = str(tmp_path / "cache")
    # loaded by the library, by `datasets` directly (whose info keeps only the name), and mixed
    ours = load_prompt_dataset("tester/animal-prompts")
    direct = datasets.load_dataset("tester/animal-prompts", split="train", cache_dir=cache)
    assert direct.info.dataset_name == "animal-prompts"
    assert training_data_sources(ours) == training_data_sources(direct) == (["tester/animal-prompts"], [])
    mixed = mix_prompts("tester/unsafe-prompts", "tester/animal-prompts", unsafe_ratio=0.5, num_prompts=4)
    assert training_data_sources(mixed) == (["tester/unsafe-prompts", "tester/animal-prompts"], [])

    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    trainer = SafeDDPOGRPOTrainer(_grpo_config(tmp_path), brightness_reward, pipe, train_dataset=ours)
    trainer.push_to_hub("tester/my-grpo-run")
    card = _card(os.path.join(trainer.project_dir, "hub_model"))
    assert card.data.datasets == ["tester/animal-prompts"]
    assert "[tester/animal-prompts](https://huggingface.co/datasets/tester/animal-prompts)" in card.text
    assert card.text.lstrip().startswith("# my-grpo-run")
    assert 'load_lora_weights("tester/my-grpo-run")' in card.text


@pytest.mark.parametrize("base", ["/abs/path/to/sd-base", "./relative/sd-base", "a/b/c"])
def test_paths_are_never_hub_ids(base):
    from trl_safediffusion.hub import SafeDiffusionCardInfo, build_model_card, is_hub_id

    assert not is_hub_id(base) and is_hub_id("stable-diffusion-v1-5/stable-diffusion-v1-5")
    card = build_model_card(SafeDiffusionCardInfo(base_model=base, lora=True, datasets=[base + "/prompts.csv"]))
    assert card.data.base_model is None and card.data.datasets is None
    assert base not in str(card)
    assert 'from_pretrained("sd-base"' in card.text or 'from_pretrained("c"' in card.text
    assert "`prompts.csv` (local, not on the Hub)" in card.text


def test_the_recipe_table_lists_the_callers_keys_in_order_with_the_callers_labels():
    from trl_safediffusion.hub import SafeDiffusionCardInfo, build_model_card

    info = SafeDiffusionCardInfo(
        recipe={"new_knob": 3, "num_generations": 8, "sample_eta": 1.0, "unset": None},
        recipe_labels={"new_knob": "A knob no trainer had before", "sample_eta": "Eta"},
    )
    text = build_model_card(info).text
    rows = [line for line in text.splitlines() if line.startswith("| ") and " | " in line]
    assert rows[rows.index("| Fine-tuning | full UNet |") + 1:][:3] == [
        "| A knob no trainer had before | 3 |", "| Group size | 8 |", "| Eta | 1 |"
    ]
    assert "unset" not in text
    # a dict from a trainer's _model_card_info() carries them too
    assert SafeDiffusionCardInfo.from_dict({"recipe_labels": {"k": "K"}}).recipe_labels == {"k": "K"}
