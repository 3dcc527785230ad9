"""Anchor presets (data files) and load_anchors from names, files, mappings and lists."""

from __future__ import annotations

import json

import pytest

from trl_safediffusion.rewards import ANCHOR_PRESETS, AnchorSet, get_anchor_preset, load_anchors


def test_presets_hold_the_reference_anchors():
    assert {"nudity-compact", "empty-positive", "toy-red"} <= set(ANCHOR_PRESETS)
    compact = get_anchor_preset("nudity-compact")
    assert len(compact.safe) == 5 and len(compact.unsafe) == 3
    assert compact.safe[1] == "a non-violent, non-sexual image"
    assert compact.unsafe[0] == "explicit sexual content and nudity"
    empty = get_anchor_preset("empty-positive")
    assert empty.safe == () and empty.unsafe == compact.unsafe
    toy = get_anchor_preset("toy-red")
    assert "red shapes" in toy.unsafe and all("red" not in p for p in toy.safe)


def test_toy_red_preset_names_only_the_toy_worlds_colours():
    from trl_safediffusion.toy.clip import TOY_SAFE_ANCHORS, TOY_UNSAFE_ANCHORS
    from trl_safediffusion.toy.world import SAFE_COLOUR_WORDS, UNSAFE_COLOUR_WORDS

    toy = get_anchor_preset("toy-red")
    # every safe colour of the toy world and nothing else (no colour the toy world does not draw)
    assert sorted(p.split()[0] for p in toy.safe) == sorted(SAFE_COLOUR_WORDS)
    assert sorted(p.split()[0] for p in toy.unsafe) == sorted(UNSAFE_COLOUR_WORDS)
    # the phrases the toy CLIP was trained on: the toy anchors themselves
    assert toy.safe == TOY_SAFE_ANCHORS and toy.unsafe == TOY_UNSAFE_ANCHORS


def test_toy_clip_backend_defaults_to_the_toy_anchors():
    from trl_safediffusion.cli import RewardArguments, build_clip_steering_reward

    args = RewardArguments(clip_backend="toy")
    reward = build_clip_steering_reward(args)
    assert reward.describe()["anchors"]["name"] == "toy-red" and args.anchors == "toy-red"
    assert reward.anchors == get_anchor_preset("toy-red")
    # anchors given explicitly are kept
    explicit = build_clip_steering_reward(RewardArguments(clip_backend="toy", anchors="empty-positive"))
    assert explicit.anchors.name == "empty-positive"


def test_load_anchors_from_name_lists_mapping_and_files(tmp_path):
    assert load_anchors("toy-red") is get_anchor_preset("toy-red")
    pair = load_anchors((["a calm lake"], ["a burning house"]))
    assert pair == AnchorSet(safe=("a calm lake",), unsafe=("a burning house",))
    assert load_anchors({"safe": [], "unsafe": ["gore"]}).unsafe == ("gore",)

    json_path = tmp_path / "mine.json"
    json_path.write_text(json.dumps({"safe": ["a dog"], "unsafe": ["a wolf", "a bear"]}))
    from_json = load_anchors(str(json_path))
    assert from_json.safe == ("a dog",) and from_json.unsafe == ("a wolf", "a bear")

    txt_path = tmp_path / "mine.txt"
    txt_path.write_text("# my anchors\nsafe: a dog\n\nunsafe: a wolf\nunsafe:  a bear \n")
    assert load_anchors(txt_path) == AnchorSet(safe=("a dog",), unsafe=("a wolf", "a bear"), name="mine.txt")


def test_anchor_errors(tmp_path):
    with pytest.raises(ValueError, match="both `safe` and `unsafe` are empty"):
        load_anchors(([], []))
    with pytest.raises(ValueError, match=r"unknown preset name 'nudity'; expected one of \['empty-positive'"):
        get_anchor_preset("nudity")
    with pytest.raises(ValueError, match="unknown preset name"):
        load_anchors("does-not-exist.json")
    with pytest.raises(ValueError, match="must be a list of strings"):
        AnchorSet(safe="a dog", unsafe=())
    with pytest.raises(ValueError, match="non-empty strings"):
        AnchorSet(safe=("",), unsafe=("x",))
    bad_txt = tmp_path / "bad.txt"
    bad_txt.write_text("safe: ok\nmaybe: what\n")
    with pytest.raises(ValueError, match="line 2: expected 'safe: <phrase>'"):
        load_anchors(bad_txt)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"positive": ["x"]}))
    with pytest.raises(ValueError, match="keys 'safe' and 'unsafe'"):
        load_anchors(bad_json)
