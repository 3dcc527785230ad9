"""The shipped toy Stable Diffusion pipeline loads offline as a real StableDiffusionPipeline and samples images."""

import os

import pytest
import torch

from trl_safediffusion.toy import load_toy_pipeline, toy_pipeline_path


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return load_toy_pipeline()


def test_shipped_files_are_safetensors_with_a_full_tokenizer():
    folder = toy_pipeline_path()
    for sub, name in (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                      ("text_encoder", "model.safetensors"), ("tokenizer", "vocab.json"), ("tokenizer", "merges.txt")):
        assert os.path.isfile(os.path.join(folder, sub, name)), f"{sub}/{name}"


def test_loads_offline_as_stable_diffusion(pipe, monkeypatch):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.unet.dtype == torch.float32 and pipe.safety_checker is None
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 8
    assert 2e6 < sum(p.numel() for p in pipe.unet.parameters()) < 3.5e6
    from trl_safediffusion.tokenization import clip_tokenizer

    ids = pipe.tokenizer(["two crimson triangles"]).input_ids[0]
    assert ids[0] == 49406 and ids[-1] == 49407  # bos ... eos
    assert ids == clip_tokenizer()(["two crimson triangles"]).input_ids[0]  # the real CLIP BPE
    assert pipe.tokenizer.model_max_length == 77


def test_samples_images_of_the_right_shape(pipe):
    generator = torch.Generator().manual_seed(0)
    out = pipe(["a blue circle", "three red squares"], num_inference_steps=4, guidance_scale=5.0,
               generator=generator, output_type="pt")
    images = out.images
    assert images.shape == (2, 3, 32, 32)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert not torch.allclose(images[0], images[1])


def test_training_captions_balance_colour_words_or_colour_families():
    from collections import Counter

    import numpy as np

    from trl_safediffusion.toy.train_pipeline import _training_spec
    from trl_safediffusion.toy.world import SAFE_COLOUR_WORDS

    n = 12_000
    for balance, red_share in (("word", 3 / 8), ("family", 1 / 6)):
        rng = np.random.default_rng(0)
        specs = [_training_spec(rng, balance) for _ in range(n)]
        colours = Counter(s.colour for s in specs)  # detector-level colour: the three red words are one colour
        tolerance = 4 * (red_share * (1 - red_share) / n) ** 0.5  # four binomial standard deviations
        assert abs(colours["red"] / n - red_share) < tolerance, (balance, colours)
        safe_share = (1 - red_share) / len(SAFE_COLOUR_WORDS)
        for colour in SAFE_COLOUR_WORDS:
            assert abs(colours[colour] / n - safe_share) < tolerance, (balance, colour, colours)
        assert {s.colour_word for s in specs if s.unsafe} == {"red", "crimson", "scarlet"}


def _painted(colour, count, seed=0, shape="square"):
    """A world image (float [0, 1]) with `count` objects laid out by seed `seed`, and the objects' mask."""
    import numpy as np

    from trl_safediffusion.toy.world import BACKGROUND_RGB, PALETTE, paint_objects

    image = np.empty((32, 32, 3))
    image[:] = BACKGROUND_RGB
    paint_objects(image, shape, PALETTE[colour], count, np.random.default_rng(seed))
    return image / 255.0, (image != np.array(BACKGROUND_RGB)).any(axis=-1)


def test_object_map_is_colour_blind_and_sees_count(pipe):
    import numpy as np

    from trl_safediffusion.toy import ObjectMap
    from trl_safediffusion.toy.world import BACKGROUND_RGB

    cases = [("red", 3), ("cyan", 3), ("yellow", 3), ("blue", 3), ("purple", 3), ("red", 2)]
    painted = [_painted(c, n) for c, n in cases]
    x = torch.tensor(np.stack([p[0] for p in painted]), dtype=torch.float32).permute(0, 3, 1, 2) * 2 - 1
    object_map = ObjectMap(pipe.vae)
    with torch.no_grad():
        latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        maps = object_map(latents)
        decoded = object_map.images(latents)
    assert maps.shape == (len(cases), 32, 32)
    # the formula, in float64 by hand from the decoded images
    d = np.linalg.norm(decoded.double().numpy() - np.array(BACKGROUND_RGB).reshape(1, 3, 1, 1) / 255.0, axis=1)
    np.testing.assert_allclose(maps.double().numpy(), 1 - np.exp(-((d / 0.5) ** 4)), atol=1e-5)
    for (colour, count), (_, mask), m in zip(cases, painted, maps):
        mask = torch.from_numpy(mask)
        assert float(m[mask].mean()) > 0.9, (colour, count)
        assert float(m[~mask].mean()) < 0.01, (colour, count)
    # the same layout in another colour moves the map ten times less than one object more
    gaps = [float((m - maps[0]).abs().mean()) for m in maps]
    assert max(gaps[1:5]) < 0.03 and gaps[5] > 0.08
    with pytest.raises(ValueError, match="latents must be"):
        object_map(latents[0])
    with pytest.raises(ValueError, match="scale"):
        ObjectMap(pipe.vae, scale=0)
