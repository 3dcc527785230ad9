"""CLIPSteeringReward: values against a float64 computation from the raw model, cache, input checks, loading."""

from __future__ import annotations

import json
import os

import pytest
import torch

from reward_fixtures import CountingBackend, open_clip_parts, random_images, transformers_parts
from trl_safediffusion.rewards import (
    AnchorSet,
    CLIPSteeringReward,
    OpenCLIPBackend,
    TransformersCLIPBackend,
    get_anchor_preset,
)
from trl_safediffusion.testing_utils import tiny_open_clip_config

PROMPTS = [
    "a red shape",
    "a blue shape on a table",
    "explicit sexual content and nudity",
    "a photo of a cat",
    "a scarlet square",
    "a wholesome family picnic",
]
ATOL = 2e-5  # float32 reward pipeline vs float64 reference from the same float32 embeddings


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _raw_embeddings_open_clip(images, prompts, anchors):
    """Float64 normalised embeddings computed directly from the open_clip model (images already at model size)."""
    model, tokenizer, _ = open_clip_parts()
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        z_x = _unit(model.encode_image((images - mean) / std).double())
        z_p = _unit(model.encode_text(tokenizer(prompts)).double())
        z_safe = _unit(model.encode_text(tokenizer(list(anchors.safe))).double()) if anchors.safe else None
        z_unsafe = _unit(model.encode_text(tokenizer(list(anchors.unsafe))).double()) if anchors.unsafe else None
    return z_x, z_p, z_safe, z_unsafe


def _raw_embeddings_transformers(images, prompts, anchors):
    model, tokenizer, processor = transformers_parts()
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)

    def text(texts):
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        out = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return _unit((out if isinstance(out, torch.Tensor) else out.pooler_output).double())

    with torch.no_grad():
        out = model.get_image_features(pixel_values=(images - mean) / std)
        z_x = _unit((out if isinstance(out, torch.Tensor) else out.pooler_output).double())
        return z_x, text(prompts), text(list(anchors.safe)) if anchors.safe else None, text(list(anchors.unsafe))


def _reference(z_x, z_p, z_safe, z_unsafe, alpha, mode, threshold=None):
    """The issue's definition, by hand in float64."""
    direction = torch.zeros(z_p.shape[-1], dtype=torch.float64)
    if z_safe is not None:
        direction += z_safe.mean(0)
    if z_unsafe is not None:
        direction -= z_unsafe.mean(0)
    v = direction / direction.norm()
    text_safety = z_p @ v
    if mode == "translate":
        target = _unit(z_p + alpha * v)
    else:
        target = _unit(z_p - text_safety[:, None] * v + alpha * v)
    steered = torch.ones(len(z_p), dtype=torch.bool) if threshold is None else text_safety < threshold
    target = torch.where(steered[:, None], target, z_p)
    return (z_x * target).sum(-1), text_safety, z_x @ v, (z_x * z_p).sum(-1), steered


def _open_clip_reward(**kwargs):
    model, tokenizer, preprocess = open_clip_parts()
    return CLIPSteeringReward(OpenCLIPBackend(model, tokenizer, preprocess), **kwargs)


@pytest.mark.parametrize(
    "anchors, alpha, mode",
    [
        ("nudity-compact", 0.5, "translate"),
        ("nudity-compact", 0.5, "projection"),
        ("nudity-compact", 0.0, "translate"),
        ("toy-red", 1.3, "projection"),
        ("empty-positive", 0.5, "translate"),
    ],
)
def test_rewards_match_float64_reference_open_clip(anchors, alpha, mode):
    images = random_images(len(PROMPTS), 32, 32, seed=1)  # model size: preprocessing is only normalisation
    reward = _open_clip_reward(anchors=anchors, alpha=alpha, mode=mode)
    rewards, meta = reward(images, PROMPTS, [{} for _ in PROMPTS])

    expected, text_safety, image_safety, alignment, steered = _reference(
        *_raw_embeddings_open_clip(images, PROMPTS, get_anchor_preset(anchors)), alpha=alpha, mode=mode
    )
    assert rewards.shape == (len(PROMPTS),) and rewards.dtype == torch.float32
    torch.testing.assert_close(rewards.double(), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(meta["text_safety"].double(), text_safety, atol=ATOL, rtol=0)
    torch.testing.assert_close(meta["image_safety"].double(), image_safety, atol=ATOL, rtol=0)
    torch.testing.assert_close(meta["alignment"].double(), alignment, atol=ATOL, rtol=0)
    assert meta["steered"].tolist() == steered.tolist()
    if alpha == 0.0 and mode == "translate":
        torch.testing.assert_close(rewards, meta["alignment"], atol=1e-6, rtol=0)  # plain CLIP alignment
    else:
        assert (rewards - meta["alignment"]).abs().max() > 1e-3  # steering changed the rewards


def test_empty_positive_direction_is_minus_mean_unsafe():
    reward = _open_clip_reward(anchors="empty-positive")
    _, _, z_safe, z_unsafe = _raw_embeddings_open_clip(torch.zeros(1, 3, 32, 32), ["x"], reward.anchors)
    assert z_safe is None
    torch.testing.assert_close(reward.v_safe.double(), _unit(-z_unsafe.mean(0)), atol=1e-6, rtol=0)


def test_threshold_mode_steers_only_prompts_below_threshold():
    images = random_images(len(PROMPTS), 32, 32, seed=2)
    plain = _open_clip_reward(alpha=0.7)
    _, meta_all = plain(images, PROMPTS)
    ordered = meta_all["text_safety"].sort().values
    threshold = float(ordered[2] + ordered[3]) / 2  # halfway between two prompts: no float32/float64 tie
    reward = _open_clip_reward(alpha=0.7, steer_prompts="below_threshold", safety_threshold=threshold)
    rewards, meta = reward(images, PROMPTS)

    expected, _, _, alignment, steered = _reference(
        *_raw_embeddings_open_clip(images, PROMPTS, reward.anchors), alpha=0.7, mode="translate", threshold=threshold
    )
    assert meta["steered"].tolist() == steered.tolist()
    assert 0 < int(steered.sum()) < len(PROMPTS)  # the threshold splits this batch
    torch.testing.assert_close(rewards.double(), expected, atol=ATOL, rtol=0)
    # unsteered prompts get plain alignment, steered ones the steered reward of the "all" mode
    torch.testing.assert_close(rewards[~meta["steered"]], meta["alignment"][~meta["steered"]], atol=1e-6, rtol=0)
    all_rewards, _ = plain(images, PROMPTS)
    torch.testing.assert_close(rewards[meta["steered"]], all_rewards[meta["steered"]], atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["translate", "projection"])
def test_rewards_match_float64_reference_transformers(mode):
    model, tokenizer, processor = transformers_parts()
    images = random_images(len(PROMPTS), 32, 32, seed=3)
    reward = CLIPSteeringReward(TransformersCLIPBackend(model, tokenizer, processor), anchors="toy-red", mode=mode)
    rewards, meta = reward(images, PROMPTS)
    expected, text_safety, _, alignment, _ = _reference(
        *_raw_embeddings_transformers(images, PROMPTS, reward.anchors), alpha=0.5, mode=mode
    )
    torch.testing.assert_close(rewards.double(), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(meta["text_safety"].double(), text_safety, atol=ATOL, rtol=0)
    torch.testing.assert_close(meta["alignment"].double(), alignment, atol=ATOL, rtol=0)


def test_prompts_encoded_once_and_anchors_once():
    model, tokenizer, preprocess = open_clip_parts()
    backend = CountingBackend(OpenCLIPBackend(model, tokenizer, preprocess))
    reward = CLIPSteeringReward(backend, anchors="nudity-compact", cache_size=3)
    anchors = get_anchor_preset("nudity-compact")
    assert backend.encoded_texts == list(anchors.safe) + list(anchors.unsafe)  # v_safe: one encode of all anchors

    images = random_images(4, 32, 32)
    first, _ = reward(images, ["a", "b", "a", "b"])
    second, _ = reward(images[[1, 0, 2, 3]], ["b", "a", "a", "b"])
    assert backend.encoded_texts[len(backend.text_calls[0]) :] == ["a", "b"]  # each prompt once, anchors not again
    torch.testing.assert_close(second, first[[1, 0, 2, 3]], atol=1e-6, rtol=0)  # cached embeddings give same rewards

    # LRU of 3 prompts; recency now (oldest first): a, b
    reward(images[:2], ["c", "d"])  # -> b, c, d: "a" is dropped
    n_before = len(backend.encoded_texts)
    reward(images[:2], ["b", "d"])  # all cached
    assert len(backend.encoded_texts) == n_before
    reward(images[:1], ["a"])  # re-encoded after eviction
    assert backend.encoded_texts[n_before:] == ["a"]
    assert len(reward._text_cache) == 3


def test_no_grad_by_default_and_differentiable_flag():
    images = random_images(2, 40, 36).requires_grad_(True)
    rewards, _ = _open_clip_reward()(images, PROMPTS[:2])
    assert not rewards.requires_grad

    rewards, _ = _open_clip_reward(differentiable=True)(images, PROMPTS[:2])
    assert rewards.requires_grad
    rewards.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    model, _, _ = open_clip_parts()
    assert all(p.grad is None for p in model.parameters())  # the frozen encoder gets no gradient


@pytest.mark.parametrize(
    "images, prompts, match",
    [
        (torch.full((2, 3, 32, 32), 1.5), ["a", "b"], r"images must be in \[0, 1\]"),
        (torch.full((2, 3, 32, 32), -0.5), ["a", "b"], r"images must be in \[0, 1\]"),
        (torch.rand(3, 32, 32), ["a"], r"images must have shape \(B, 3, H, W\)"),
        (torch.rand(2, 4, 32, 32), ["a", "b"], r"images must have shape \(B, 3, H, W\)"),
        (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), ["a", "b"], "images must be float"),
        (torch.rand(2, 3, 32, 32), ["a", "b", "c"], "prompts has 3 entries but images has batch size 2"),
        (torch.rand(1, 3, 32, 32), "a", "prompts must be a list"),
        (torch.rand(1, 3, 32, 32), [3], "prompts must contain strings"),
    ],
)
def test_bad_inputs_raise_value_error_naming_argument(images, prompts, match):
    reward = _open_clip_reward()
    with pytest.raises(ValueError, match=match):
        reward(images, prompts, None)


def test_bad_constructor_arguments():
    model, tokenizer, preprocess = open_clip_parts()
    backend = OpenCLIPBackend(model, tokenizer, preprocess)
    with pytest.raises(ValueError, match="both `safe` and `unsafe` are empty"):
        CLIPSteeringReward(backend, anchors=([], []))
    with pytest.raises(ValueError, match="anchors: unknown preset name 'no-such-preset'"):
        CLIPSteeringReward(backend, anchors="no-such-preset")
    with pytest.raises(ValueError, match="mode must be one of"):
        CLIPSteeringReward(backend, mode="rotate")
    with pytest.raises(ValueError, match="steer_prompts must be one of"):
        CLIPSteeringReward(backend, steer_prompts="some")
    with pytest.raises(ValueError, match="v_safe is undefined"):
        CLIPSteeringReward(backend, anchors=AnchorSet(safe=("a cat",), unsafe=("a cat",)))


def test_from_open_clip_with_local_config_checkpoint_and_directory(tmp_path):
    model, tokenizer, preprocess = open_clip_parts()
    images = random_images(3, 40, 48, seed=4)
    expected, _ = CLIPSteeringReward(OpenCLIPBackend(model, tokenizer, preprocess), anchors="toy-red")(
        images, PROMPTS[:3]
    )

    config_path = tmp_path / "tiny-clip-localcfg.json"
    config_path.write_text(json.dumps(tiny_open_clip_config()))
    checkpoint = tmp_path / "weights.pt"
    torch.save(model.state_dict(), checkpoint)
    loaded = CLIPSteeringReward.from_open_clip(
        "tiny-clip-localcfg", pretrained=str(checkpoint), model_config=str(config_path), anchors="toy-red"
    )
    torch.testing.assert_close(loaded(images, PROMPTS[:3])[0], expected, atol=1e-6, rtol=0)

    hub_dir = tmp_path / "hub-layout"
    hub_dir.mkdir()
    (hub_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": tiny_open_clip_config(), "preprocess_cfg": dict(model.visual.preprocess_cfg)})
    )
    torch.save(model.state_dict(), hub_dir / "open_clip_pytorch_model.bin")
    from_dir = CLIPSteeringReward.from_open_clip(str(hub_dir), anchors="toy-red")
    torch.testing.assert_close(from_dir(images, PROMPTS[:3])[0], expected, atol=1e-6, rtol=0)

    with pytest.raises(ValueError, match="pretrained: checkpoint file"):
        CLIPSteeringReward.from_open_clip("tiny-clip-localcfg", pretrained=os.path.join(tmp_path, "missing.pt"))


def test_from_transformers_local_folder(tmp_path):
    model, tokenizer, processor = transformers_parts()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    images = random_images(2, 50, 40, seed=5)
    expected, _ = CLIPSteeringReward(TransformersCLIPBackend(model, tokenizer, processor))(images, PROMPTS[:2])
    loaded = CLIPSteeringReward.from_transformers(str(tmp_path))
    torch.testing.assert_close(loaded(images, PROMPTS[:2])[0], expected, atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_images_on_another_device_than_the_model():
    images = random_images(2, 32, 32).cuda()
    rewards, _ = _open_clip_reward()(images, PROMPTS[:2])
    assert rewards.device == images.device
    torch.testing.assert_close(rewards.cpu(), _open_clip_reward()(images.cpu(), PROMPTS[:2])[0], atol=1e-5, rtol=0)
