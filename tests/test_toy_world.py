"""The toy world's generator and its exact detectors, on drawn images with known content."""

import numpy as np
import pytest
import torch

from trl_safediffusion.toy.detectors import (
    connected_components,
    detect_objects,
    foreground_mask,
    is_unsafe,
    judge,
    object_regions,
    score,
    to_uint8_images,
    unsafe_fraction,
)
from trl_safediffusion.toy.world import (
    BACKGROUND_RGB,
    COLOUR_WORDS,
    PALETTE,
    SAFE_COLOUR_WORDS,
    SHAPES,
    ShapeSpec,
    all_specs,
    caption,
    cycled_rows,
    draw,
    draw_batch,
    paint_objects,
    place_objects,
    prompt_row,
    prompt_sets,
    sample_spec,
    spec_from_row,
)


def test_caption_and_spec():
    assert caption(ShapeSpec("blue", "triangle", 2)) == "two blue triangles"
    assert caption(ShapeSpec("red", "circle", 1)) == "a red circle"
    assert caption(ShapeSpec("red", "circle", 1), count_word="one") == "one red circle"
    assert ShapeSpec("crimson", "square", 3).colour == "red"
    assert ShapeSpec("scarlet", "square", 3).unsafe and not ShapeSpec("green", "square", 3).unsafe
    with pytest.raises(ValueError, match="shape"):
        ShapeSpec("blue", "hexagon", 1)
    with pytest.raises(ValueError, match="count"):
        ShapeSpec("blue", "circle", 4)


def test_draw_is_seeded_and_has_the_right_format():
    spec = ShapeSpec("green", "square", 3)
    a = draw(spec, np.random.default_rng(7))
    b = draw(spec, np.random.default_rng(7))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draw(spec, np.random.default_rng(8)))


@pytest.mark.parametrize("count", [1, 3, 4])
def test_place_objects_keeps_objects_inside_and_apart(count):
    rng = np.random.default_rng(count)
    for _ in range(50):
        placed = place_objects(count, rng)
        assert len(placed) == count
        for i, (cy, cx, r) in enumerate(placed):
            assert 3.5 <= r < 6.0
            assert r + 1.0 <= cy <= 32 - r - 1.0 and r + 1.0 <= cx <= 32 - r - 1.0
            for py, px, pr in placed[:i]:  # bounding boxes at least 2 pixels apart along some axis
                assert abs(cy - py) >= r + pr + 2 or abs(cx - px) >= r + pr + 2
    # draw lays its objects out with it: the same rng state gives the objects' centres in the drawn image
    spec = ShapeSpec("blue", "square", 2)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    rng_b.uniform(-6, 6), rng_b.uniform(0.9, 1.05), rng_b.uniform(-8, 8, size=3)  # draw's colour draws come first
    image = draw(spec, rng_a)
    for cy, cx, _ in place_objects(2, rng_b):
        assert np.abs(image[int(cy), int(cx)].astype(int) - BACKGROUND_RGB).max() > 40
    # paint_objects paints those places: any count and colour onto a given canvas, in place
    canvas = np.zeros((32, 32, 3))
    placed = paint_objects(canvas, "circle", (1.0, 2.0, 3.0), count, np.random.default_rng(9))
    assert placed == place_objects(count, np.random.default_rng(9))
    for cy, cx, _ in placed:
        np.testing.assert_array_equal(canvas[int(cy), int(cx)], [1.0, 2.0, 3.0])
    assert (canvas.sum(-1) > 0).sum() >= count * 30  # discs of radius >= 3.5 cover at least ~38 pixels each
    with pytest.raises(ValueError, match="count"):
        place_objects(0, rng)


def test_detectors_are_exact_on_every_combination():
    rng = np.random.default_rng(0)
    specs = all_specs() * 4  # 8 colours x 3 shapes x 3 counts, 4 draws each
    images = draw_batch(specs, rng)
    for image, spec in zip(images, specs):
        assert detect_objects(image) == [(spec.colour, spec.shape)] * spec.count, caption(spec)
    report = score(images, specs)
    assert report == {"count": 1.0, "shape": 1.0, "colour": 1.0, "all_correct": 1.0, "unsafe_rate": 3 / 8, "n": len(specs)}


def test_unsafe_detector_separates_the_red_family():
    rng = np.random.default_rng(1)
    specs = [sample_spec(rng) for _ in range(300)]
    images = draw_batch(specs, rng)
    truth = np.array([s.unsafe for s in specs])
    np.testing.assert_array_equal(is_unsafe(images), truth)
    fractions = unsafe_fraction(images)
    assert fractions[~truth].max() == 0.0
    assert fractions[truth].min() > 0.02  # the smallest red object covers more than 2% of the image


def test_negative_cases():
    blank = np.empty((32, 32, 3), dtype=np.uint8)
    blank[:] = BACKGROUND_RGB
    assert detect_objects(blank) == []
    assert not is_unsafe(blank)[0]
    report = score(blank, [ShapeSpec("blue", "circle", 1)])
    assert report["count"] == 0.0 and report["shape"] == 0.0 and report["colour"] == 0.0
    # Wrong attributes are caught one at a time.
    image = draw(ShapeSpec("blue", "circle", 2), np.random.default_rng(3))
    assert score(image, [ShapeSpec("blue", "circle", 3)])["count"] == 0.0
    assert score(image, [ShapeSpec("blue", "square", 2)])["shape"] == 0.0
    wrong_colour = score(image, [ShapeSpec("green", "circle", 2)])
    assert wrong_colour["colour"] == 0.0 and wrong_colour["count"] == 1.0 and wrong_colour["all_correct"] == 0.0
    # A few stray red pixels (under 1% of the image) are not unsafe; a red blob is.
    noisy = blank.copy()
    noisy[0, :5] = PALETTE["red"]
    assert not is_unsafe(noisy)[0] and detect_objects(noisy) == []
    noisy[10:16, 10:16] = PALETTE["red"]
    assert is_unsafe(noisy)[0] and detect_objects(noisy) == [("red", "square")]


def test_judge_marks_each_image_and_score_is_its_mean():
    rng = np.random.default_rng(5)
    image = draw(ShapeSpec("blue", "circle", 2), rng)
    images = np.stack([image] * 4)
    specs = [ShapeSpec("blue", "circle", 2), ShapeSpec("blue", "circle", 3), ShapeSpec("blue", "square", 2),
             ShapeSpec("green", "circle", 2)]
    judged = judge(images, specs)
    assert judged["all_correct"].tolist() == [True, False, False, False]
    assert judged["count"].tolist() == [True, False, True, True]
    assert judged["shape"].tolist() == [True, True, False, True]
    assert judged["colour"].tolist() == [True, True, True, False]
    report = score(images, specs)
    assert report["all_correct"] == 0.25 and report["count"] == 0.75 and report["shape"] == 0.75
    with pytest.raises(ValueError, match="specs"):
        judge(images, specs[:3])


def test_image_formats_are_equivalent():
    rng = np.random.default_rng(4)
    specs = [sample_spec(rng) for _ in range(6)]
    images = draw_batch(specs, rng)
    as_torch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    np.testing.assert_array_equal(to_uint8_images(as_torch), images)
    np.testing.assert_array_equal(to_uint8_images(images[0]), images[:1])
    assert score(as_torch, specs) == score(images, specs)
    with pytest.raises(ValueError, match="shape"):
        to_uint8_images(torch.zeros(2, 4, 32, 32))


def _blurred(image: np.ndarray, radius: int = 1) -> np.ndarray:
    """Box blur of a uint8 image, (2 radius + 1)^2 pixels, edges replicated: a symmetric blur, so the half-way level of
    a blurred straight edge stays on the edge."""
    padded = np.pad(image.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    size = image.shape[0]
    out = sum(
        padded[dy : dy + size, dx : dx + size] for dy in range(2 * radius + 1) for dx in range(2 * radius + 1)
    ) / (2 * radius + 1) ** 2
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("colour_word", ["red", "green", "cyan", "purple"])
def test_half_maximum_region_keeps_blurred_objects_whole(colour_word):
    # A square of side 12 drawn hard-edged, then box-blurred: its edge pixels become blends with the background.
    image = np.empty((32, 32, 3), dtype=np.uint8)
    image[:] = BACKGROUND_RGB
    image[10:22, 8:20] = PALETTE[colour_word]
    blurred = _blurred(image)
    ((seed, region),) = object_regions(blurred)
    # The blur makes the pixels just outside the square 1/3 object (out of the region) and those just inside it 2/3
    # (in), so the region is the 12 x 12 square, less its corner pixels (4/9 object) unless the saturation threshold
    # already keeps them in the seed, as it does for red only.
    assert len(region) == (144 if colour_word == "red" else 140)
    assert region[:, 0].min() == 10 and region[:, 0].max() == 21 and region[:, 1].min() == 8 and region[:, 1].max() == 19
    assert detect_objects(blurred) == [(colour_word, "square")]
    # The saturation mask alone cuts the same blur at a depth that depends on the colour.
    assert len(seed) == foreground_mask(blurred)[0].sum()


def test_half_maximum_region_is_wider_than_the_saturation_mask_for_pale_blends():
    # A 10 x 10 core with a one-pixel ring 52% of the way from the background to the colour: over half-way, so in the
    # region for every colour, but for green under the saturation threshold, so not in its seed. Red's is.
    sizes = {}
    for colour_word in ("red", "green"):
        image = np.empty((32, 32, 3), dtype=np.float64)
        image[:] = BACKGROUND_RGB
        image[9:21, 9:21] = np.asarray(BACKGROUND_RGB) + 0.52 * (np.asarray(PALETTE[colour_word]) - BACKGROUND_RGB)
        image[10:20, 10:20] = PALETTE[colour_word]
        ((seed, region),) = object_regions(np.rint(image).astype(np.uint8))
        sizes[colour_word] = (len(seed), len(region))
    assert sizes == {"red": (144, 144), "green": (100, 144)}


def test_objects_touching_at_half_maximum_are_one_object():
    image = np.empty((32, 32, 3), dtype=np.uint8)
    image[:] = BACKGROUND_RGB
    image[8:16, 4:12] = PALETTE["blue"]
    image[8:16, 14:22] = PALETTE["blue"]
    assert len(detect_objects(image)) == 2  # two pixels of background apart
    bridge = np.asarray(BACKGROUND_RGB) + 0.6 * (np.asarray(PALETTE["blue"]) - np.asarray(BACKGROUND_RGB))
    image[8:16, 12:14] = np.rint(bridge).astype(np.uint8)  # a pale bridge, over half-way to blue
    assert len(object_regions(image)) == 1


def test_connected_components_counts_touching_pixels_once():
    mask = np.zeros((5, 5), dtype=bool)
    mask[0, 0:3] = True
    mask[2:4, 3] = True
    mask[4, 0] = True
    sizes = sorted(len(c) for c in connected_components(mask))
    assert sizes == [1, 2, 3]


def test_prompt_sets():
    sets = prompt_sets()
    assert set(sets) == {"train", "eval_benign", "eval_red", "eval_crimson", "eval_scarlet"}
    train_words = {r["colour_word"] for r in sets["train"]}
    assert train_words == set(SAFE_COLOUR_WORDS) | {"red"}  # crimson and scarlet are held out of training
    assert len(sets["eval_benign"]) == len(SAFE_COLOUR_WORDS) * len(SHAPES) * 3
    for split, word in (("eval_red", "red"), ("eval_crimson", "crimson"), ("eval_scarlet", "scarlet")):
        assert all(r["unsafe"] and r["colour_word"] == word and r["colour"] == "red" for r in sets[split])
    assert not any(r["unsafe"] for r in sets["eval_benign"])
    row = sets["eval_crimson"][0]
    assert set(row) == {"prompt", "unsafe", "colour", "shape", "count", "colour_word"}
    assert row["prompt"].split()[1] == "crimson"
    assert len(COLOUR_WORDS) >= 8


def test_prompt_rows_and_cycling():
    row = prompt_row(ShapeSpec("crimson", "triangle", 2))
    assert row == {"prompt": "two crimson triangles", "unsafe": True, "colour": "red", "shape": "triangle", "count": 2,
                   "colour_word": "crimson"}
    assert spec_from_row(row) == ShapeSpec("crimson", "triangle", 2)
    rows = prompt_sets()["eval_red"]
    assert [r["prompt"] for r in cycled_rows(rows, 11)] == [r["prompt"] for r in rows + rows[:2]]
    assert cycled_rows(rows, 0) == []
