"""steering_sweep: table rows, alpha = 0 equals plain alignment, one encode for all alphas, PNG written."""

from __future__ import annotations

from reward_fixtures import CountingBackend, open_clip_parts, random_images
from trl_safediffusion.rewards import CLIPSteeringReward, OpenCLIPBackend, steering_sweep


def test_sweep_table_png_and_alpha_zero_rows(tmp_path):
    model, tokenizer, preprocess = open_clip_parts()
    backend = CountingBackend(OpenCLIPBackend(model, tokenizer, preprocess))
    images = random_images(6, 40, 40, seed=7)
    prompts = ["a blue shape", "a green shape", "a yellow shape", "a red shape", "a crimson shape", "a scarlet cube"]
    labels = ["safe"] * 3 + ["unsafe"] * 3
    png = tmp_path / "plots" / "sweep.png"

    result = steering_sweep(backend, images, prompts, labels, out_png=png, anchors="toy-red")

    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert result.png_path == str(png)
    rows = result.to_dicts()
    assert len(rows) == 21 * 2 and set(rows[0]) == {"alpha", "label", "mean", "std", "n"}
    assert sorted({r["alpha"] for r in rows}) == [round(0.1 * i, 10) for i in range(21)]
    # one encode for all alphas: anchors once, then the six prompts once
    assert len(backend.text_calls) == 2 and backend.text_calls[1] == prompts

    plain = CLIPSteeringReward(backend, anchors="toy-red", alpha=0.0)
    _, meta = plain(images, prompts)
    for label, sel in (("safe", slice(0, 3)), ("unsafe", slice(3, 6))):
        row = next(r for r in rows if r["alpha"] == 0.0 and r["label"] == label)
        alignment = meta["alignment"][sel].double()
        assert abs(row["mean"] - float(alignment.mean())) < 1e-6
        assert abs(row["std"] - float(alignment.std(unbiased=False))) < 1e-6
        assert row["n"] == 3
    # rows at another alpha equal the reward called with that alpha
    steered, _ = CLIPSteeringReward(backend, anchors="toy-red", alpha=1.2)(images, prompts)
    row = next(r for r in rows if r["alpha"] == 1.2 and r["label"] == "unsafe")
    assert abs(row["mean"] - float(steered[3:].double().mean())) < 1e-6


def test_sweep_with_a_reward_keeps_its_mode_and_custom_alphas():
    model, tokenizer, preprocess = open_clip_parts()
    reward = CLIPSteeringReward(OpenCLIPBackend(model, tokenizer, preprocess), mode="projection", alpha=0.5)
    images = random_images(2, 32, 32, seed=8)
    result = steering_sweep(reward, images, ["a cat", "a dog"], ["x", "y"], alphas=[1.0, 0.25])
    assert [(r.alpha, r.label) for r in result.rows] == [(0.25, "x"), (0.25, "y"), (1.0, "x"), (1.0, "y")]
    expected, _ = CLIPSteeringReward(
        OpenCLIPBackend(model, tokenizer, preprocess), mode="projection", alpha=0.25
    )(images, ["a cat", "a dog"])
    assert abs(result.rows[1].mean - float(expected[1])) < 1e-6 and result.rows[1].std == 0.0
    assert result.png_path is None
    assert reward.alpha == 0.5  # the sweep does not change the reward


def test_sweep_title_names_anchors_given_as_lists(tmp_path):
    model, tokenizer, preprocess = open_clip_parts()
    backend = OpenCLIPBackend(model, tokenizer, preprocess)
    images = random_images(2, 32, 32, seed=9)
    listed = steering_sweep(backend, images, ["a cat", "a dog"], ["safe", "unsafe"], alphas=[0.0, 1.0],
                            out_png=tmp_path / "lists.png", anchors=(["a calm lake"], ["a burning house", "gore"]))
    assert "None" not in listed.title
    assert 'safe anchors: "a calm lake"' in listed.title
    assert 'unsafe anchors: "a burning house", "gore"' in listed.title
    assert listed.title.startswith("CLIP steering reward vs alpha (translate")
    named = steering_sweep(backend, images, ["a cat", "a dog"], ["safe", "unsafe"], alphas=[0.0],
                           out_png=tmp_path / "named.png", anchors="toy-red")
    assert named.title == "CLIP steering reward vs alpha (translate, anchors toy-red)"
    long = steering_sweep(backend, images, ["a cat", "a dog"], ["safe", "unsafe"], alphas=[0.0],
                          out_png=tmp_path / "long.png", anchors={"safe": [f"safe phrase {i}" for i in range(30)],
                                                                  "unsafe": []})
    assert "..." in long.title and 'unsafe anchors: none' in long.title and max(map(len, long.title.split("\n"))) < 100
    assert (tmp_path / "lists.png").is_file() and (tmp_path / "long.png").is_file()
