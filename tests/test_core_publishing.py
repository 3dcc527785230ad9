"""The trainer's own publishing paths against the fake Hub: samples every k epochs, the model and its card."""

import torch
from datasets import Dataset, load_dataset
from huggingface_hub import ModelCard

from conftest_hub import FAKE_TOKEN, fake_hub  # noqa: F401
from trl_safediffusion import (
    CombinedReward,
    DefaultDDPOStableDiffusionPipeline,
    SafeDDPOGRPOConfig,
    SafeDDPOGRPOTrainer,
)
from trl_safediffusion.testing_utils import tiny_sd_pipeline


def brightness(images, prompts, metadata):
    return images.float().mean(dim=(1, 2, 3)), {}


def contrast(images, prompts, metadata):
    return images.float().std(dim=(1, 2, 3)), {}


def test_samples_dataset_and_model_published_from_training(tmp_path, fake_hub):  # noqa: F811
    config = SafeDDPOGRPOConfig(
        num_epochs=2, sample_num_steps=2, sample_batch_size=4, sample_num_batches_per_epoch=1, train_batch_size=4,
        num_generations=2, mixed_precision="no", save_freq=0, logdir=str(tmp_path), push_to_hub=True,
        hub_model_id="tester/pub-model", push_samples_every=1, samples_dataset_id="tester/pub-samples",
        hub_token=FAKE_TOKEN, reward_weights=[1.0, 2.0],
    )
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    prompts = Dataset.from_dict({"prompt": ["a red square", "a blue circle"], "unsafe": [True, False]})
    trainer = SafeDDPOGRPOTrainer(config, [brightness, contrast], pipe, train_dataset=prompts)
    assert isinstance(trainer.reward_fn, CombinedReward)
    trainer.train()

    rows = load_dataset("tester/pub-samples", split="train")
    assert len(rows) == 8 and sorted(set(rows["epoch"])) == [0, 1]
    assert set(rows["label"]) <= {"True", "False"} and set(rows["prompt"]) <= {"a red square", "a blue circle"}
    for row in rows:
        assert abs(row["reward"] - (row["reward_brightness"] + 2.0 * row["reward_contrast"])) < 1e-5
    assert rows[0]["image"].size == (16, 16)

    fresh = tiny_sd_pipeline()
    fresh.load_lora_weights("tester/pub-model")
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    emb = pipe.encode_prompts(["a red square"]).float()
    with torch.no_grad():
        torch.testing.assert_close(fresh.unet(x, t, emb).sample, pipe.unet(x, t, emb).sample, rtol=0, atol=1e-6)
    card = ModelCard.load("tester/pub-model")
    tags = set(card.data.tags)
    assert {"trl", "trl-safediffusion", "safediffusion-r1", "grpo", "safety"} <= tags
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    assert "Group size" in card.text and FAKE_TOKEN not in card.content


def test_ddpo_samples_dataset_card_names_ddpo(tmp_path, fake_hub):  # noqa: F811
    """A DDPOTrainer run's sample dataset is not presented as SafeDiffusion-R1 training."""
    from huggingface_hub import DatasetCard

    from trl_safediffusion import DDPOConfig, DDPOTrainer

    config = DDPOConfig(
        num_epochs=1, sample_num_steps=2, sample_batch_size=2, sample_num_batches_per_epoch=1, train_batch_size=2,
        mixed_precision="no", save_freq=0, logdir=str(tmp_path), push_samples_every=1,
        samples_dataset_id="tester/ddpo-samples", hub_token=FAKE_TOKEN,
    )
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    DDPOTrainer(config, brightness, lambda: ("a cat", {}), pipe).train()
    card = DatasetCard.load("tester/ddpo-samples", repo_type="dataset")
    assert "ddpo" in card.data.tags
    assert not {"safediffusion-r1", "grpo", "safety"} & set(card.data.tags)
    assert "DDPO training samples" in card.text and "SafeDiffusion-R1" not in card.text
