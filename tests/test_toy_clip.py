"""The shipped toy CLIP loads through open_clip with no network and knows colour, and the red family."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trl_safediffusion.toy import load_toy_clip, toy_clip_paths
from trl_safediffusion.toy.world import (
    COLOUR_WORDS,
    SAFE_COLOUR_WORDS,
    ShapeSpec,
    caption,
    colour_family,
    draw_batch,
    sample_spec,
)


@pytest.fixture(scope="module")
def clip():
    return load_toy_clip()


def _encode_images(model, images_uint8):
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return F.normalize(model.encode_image((x - mean) / std), dim=-1)


def _encode_text(model, tokenizer, texts):
    with torch.no_grad():
        return F.normalize(model.encode_text(tokenizer(texts)), dim=-1)


def test_paths_and_config():
    name, config, checkpoint = toy_clip_paths()
    assert name == "toy-clip" and config.endswith(".json") and checkpoint.endswith(".safetensors")


def test_toy_steering_reward_is_the_open_clip_reward_on_the_toy_anchors():
    from trl_safediffusion.rewards import CLIPSteeringReward
    from trl_safediffusion.toy import toy_anchors, toy_steering_reward

    rng = np.random.default_rng(1)
    specs = [sample_spec(rng) for _ in range(4)]
    images = torch.from_numpy(draw_batch(specs, rng)).permute(0, 3, 1, 2).float() / 255
    prompts = [caption(s) for s in specs]
    name, config, checkpoint = toy_clip_paths()
    by_hand = CLIPSteeringReward.from_open_clip(name, pretrained=checkpoint, model_config=config, anchors=toy_anchors(),
                                                alpha=0.5, mode="projection")
    expected, _ = by_hand(images, prompts, None)
    got, _ = toy_steering_reward()(images, prompts, None)
    torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(expected), rtol=0, atol=1e-6)
    blue_only, _ = toy_steering_reward(anchors={"safe": ["blue shapes"], "unsafe": ["red shapes"]})(images, prompts, None)
    assert not torch.allclose(torch.as_tensor(blue_only), torch.as_tensor(expected))  # `anchors` is used


def test_true_caption_beats_wrong_colour_captions(clip):
    model, _, tokenizer = clip
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng, colours=SAFE_COLOUR_WORDS + ("red",)) for _ in range(40)]
    image_features = _encode_images(model, draw_batch(specs, rng))
    wins = 0
    for feature, spec in zip(image_features, specs):
        others = [c for c in SAFE_COLOUR_WORDS + ("red",) if c != spec.colour_word]
        texts = [caption(spec)] + [caption(ShapeSpec(c, spec.shape, spec.count)) for c in others]
        sims = _encode_text(model, tokenizer, texts) @ feature
        wins += int(sims[0] > sims[1:].max())
    assert wins >= 36, f"true caption ranked first for only {wins}/40 images"


def test_red_family_words_embed_near_red(clip):
    model, _, tokenizer = clip
    spec = ShapeSpec("red", "triangle", 2)
    texts = [caption(ShapeSpec(c, spec.shape, spec.count)) for c in COLOUR_WORDS]
    z = _encode_text(model, tokenizer, texts)
    sims = dict(zip(COLOUR_WORDS, (z @ z[0]).tolist()))
    nearest_safe = max(sims[c] for c in COLOUR_WORDS if colour_family(c) != "red")
    assert sims["crimson"] > nearest_safe and sims["scarlet"] > nearest_safe, sims


def test_hard_negatives_match_their_keys():
    from trl_safediffusion.toy.detectors import detect_objects
    from trl_safediffusion.toy.train_clip import HARD_NEGATIVE_KINDS, _Key, consistency, hard_negative
    from trl_safediffusion.toy.world import BACKGROUND_RGB

    rng = np.random.default_rng(0)
    caption_keys = [("blue", "triangle", 3), ("blue", "triangle", None), (None, "triangle", 3), ("blue", None, None),
                    (None, "triangle", 2)]
    for _ in range(20):
        image, key = hard_negative("four", rng)
        found = detect_objects(image)
        assert key.count == "4" and found == [(key.colour, key.shape)] * 4
        image, key = hard_negative("grey", rng)
        differs = np.abs(image.astype(int) - BACKGROUND_RGB).max(axis=-1) > 30
        assert key.colour == "grey" and detect_objects(image) == [] and differs.sum() >= 6 * int(key.count)
        image, key = hard_negative("empty", rng)
        assert detect_objects(image) == [] and np.abs(image.astype(int) - BACKGROUND_RGB).max() <= 7
    match = consistency(caption_keys, [_Key("blue", "triangle", "4"), _Key("grey", "triangle", "2"), _Key("none", "none", "0")])
    # four blue triangles: "blue triangles" and "blue shapes", no caption with a count; two grey triangles: only the
    # colourless "two triangles"; the empty image: nothing
    np.testing.assert_array_equal(match.numpy(), [[0, 1, 0, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="kind"):
        hard_negative("five", rng)
    assert set(HARD_NEGATIVE_KINDS) == {"four", "grey", "empty"}


def test_train_clip_fine_tunes_from_init_with_hard_negatives(tmp_path):
    from safetensors.torch import load_file

    from trl_safediffusion.toy.train_clip import main

    shipped = toy_clip_paths()[2]
    folder = os.path.dirname(shipped)
    # lr 0: the weights written are the init weights, so --init really loads them (fp16 in, fp16 out, exactly)
    main(["--out", str(tmp_path / "same"), "--init", folder, "--steps", "2", "--batch-size", "16", "--lr", "0",
          "--hard-negatives", "0.5", "--half", "--threads", "1"])
    before, after = load_file(shipped), load_file(str(tmp_path / "same" / "toy-clip.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a real step with every kind of hard negative changes them
    main(["--out", str(tmp_path / "tuned"), "--init", folder, "--steps", "2", "--batch-size", "16", "--lr", "1e-3",
          "--hard-negatives", "0.5", "--hard-negative-kinds", "four,grey,empty", "--half", "--threads", "1"])
    tuned = load_file(str(tmp_path / "tuned" / "toy-clip.safetensors"))
    assert any(not torch.equal(before[k], tuned[k]) for k in before if before[k].is_floating_point())
    assert all(torch.isfinite(v.float()).all() for v in tuned.values())
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "bad"), "--steps", "1", "--hard-negatives", "0.5", "--hard-negative-kinds", "six"])
