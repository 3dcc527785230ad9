"""The toy flow-matching pipeline: its training script writes a folder that stock diffusers loads as a
StableDiffusion3Pipeline and samples from; the rectified-flow pair, the text tower and the collapsed zero tokens of
training match independent computations."""

import copy
import json
import os

import pytest
import torch

from trl_safediffusion.toy import pipeline as toy_pipeline
from trl_safediffusion.toy.train_flow_pipeline import (
    SD3_MAX_SEQUENCE_LENGTH,
    RepeatedTokenJointAttnProcessor,
    build_flow_components,
    encode_clip_prompts,
    flow_training_pair,
    load_toy_text_encoder,
    main,
    training_context,
)

PROMPTS = ["two red circles", "a blue square", "three scarlet triangles", ""]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("toy-flow")
    main(["--out", str(out), "--seed", "0", "--steps", "3", "--batch-size", "4", "--warmup", "1",
          "--checkpoint-every", "0", "--half"])
    return str(out)


@pytest.fixture(scope="module")
def components():
    return build_flow_components(seed=0)


def test_training_script_writes_a_folder_that_stock_diffusers_loads_and_samples(trained, components):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    pipe = StableDiffusion3Pipeline.from_pretrained(trained, text_encoder_3=None, tokenizer_3=None,
                                                    local_files_only=True)
    assert isinstance(pipe.transformer, SD3Transformer2DModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert isinstance(pipe.text_encoder, CLIPTextModelWithProjection)
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    from safetensors import safe_open

    for sub in ("transformer", "vae"):
        with safe_open(os.path.join(trained, sub, "diffusion_pytorch_model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}, sub  # --half
    assert pipe.vae.config.shift_factor == 0.0
    assert pipe.vae.config.scaling_factor == components["vae"].config.scaling_factor
    assert 2e6 < sum(p.numel() for p in pipe.transformer.parameters()) < 3e6
    for sub in ("tokenizer", "tokenizer_2"):
        for name in ("vocab.json", "merges.txt"):
            assert os.path.isfile(os.path.join(trained, sub, name))
    with open(os.path.join(trained, "training_info.json")) as f:
        info = json.load(f)
    assert info["args"]["steps"] == 3 and info["seed"] == 0 and info["stored"] == "fp16"

    # the stock attention processors are saved: a fresh load has no trace of the training processor
    assert not any(isinstance(p, RepeatedTokenJointAttnProcessor) for p in pipe.transformer.attn_processors.values())
    # trained weights moved away from the seeded initialisation; frozen ones did not
    init = dict(components["transformer"].named_parameters())
    moved = max((p.float() - init[n]).abs().max().item() for n, p in pipe.transformer.named_parameters())
    assert moved > 2e-3  # 3 Adam steps of lr 2e-3; fp16 rounds by at most 5e-4 here
    for name, p in pipe.vae.named_parameters():
        torch.testing.assert_close(p.float(), dict(components["vae"].named_parameters())[name], atol=1e-3, rtol=1e-3)

    pipe = pipe.to(dtype=torch.float32)
    out = pipe(["a blue circle", "two red squares"], num_inference_steps=3, guidance_scale=5.0,
               generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (2, 3, 32, 32)
    assert torch.isfinite(out.images).all() and out.images.min() >= 0 and out.images.max() <= 1



def test_a_further_stage_starts_from_the_given_folder_and_records_both_stages(trained, tmp_path):
    from diffusers import SD3Transformer2DModel

    main(["--out", str(tmp_path), "--init", trained, "--seed", "1", "--steps", "1", "--batch-size", "2",
          "--warmup", "1", "--lr", "1e-9", "--checkpoint-every", "0"])
    with open(os.path.join(tmp_path, "training_info.json")) as f:
        info = json.load(f)
    assert [stage["args"]["steps"] for stage in info["stages"]] == [3, 1]
    assert info["stages"][1]["args"]["init"] == trained and info["stored"] == "fp32"
    assert info["stages"][0]["args"]["num_layers"] == 4 and info["stages"][1]["args"]["num_layers"] is None  # the folder's
    # at lr 1e-9 one step leaves the transformer where the first stage ended (not at a fresh initialisation)
    before = SD3Transformer2DModel.from_pretrained(os.path.join(trained, "transformer"), torch_dtype=torch.float32)
    after = SD3Transformer2DModel.from_pretrained(os.path.join(tmp_path, "transformer"), torch_dtype=torch.float32)
    for (name, p), q in zip(before.named_parameters(), after.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0, msg=name)



def test_a_wider_deeper_transformer_is_a_flag_and_loads_with_stock_diffusers(tmp_path):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    main(["--out", str(tmp_path), "--seed", "0", "--steps", "1", "--batch-size", "2", "--warmup", "1",
          "--checkpoint-every", "0", "--num-layers", "5", "--num-heads", "6", "--patch-size", "1"])
    transformer = SD3Transformer2DModel.from_pretrained(os.path.join(tmp_path, "transformer"))
    assert transformer.config.num_layers == 5 and transformer.config.num_attention_heads == 6
    assert transformer.config.patch_size == 1
    assert len(transformer.transformer_blocks) == 5
    with open(os.path.join(tmp_path, "training_info.json")) as f:
        args = json.load(f)["args"]
    assert args["num_heads"] == 6 and args["patch_size"] == 1
    assert transformer.transformer_blocks[0].attn.to_q.weight.shape == (6 * 32, 6 * 32)
    # patch size 1: one image token per latent pixel (64 on the 8x8 latents), the stock pipeline samples with it
    assert transformer.pos_embed.proj.kernel_size == (1, 1)
    tokens = transformer.pos_embed(torch.zeros(1, 4, 8, 8))
    assert tokens.shape[1] == 64
    pipe = StableDiffusion3Pipeline.from_pretrained(str(tmp_path), text_encoder_3=None, tokenizer_3=None)
    images = pipe(["two blue triangles"], num_inference_steps=2, guidance_scale=5.0, output_type="pt").images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    # the default is the shipped architecture
    shipped = toy_pipeline.load_toy_flow_pipeline().transformer.config
    default = build_flow_components(seed=0)["transformer"].config
    assert (default.num_layers, default.num_attention_heads, default.patch_size) == (
        shipped.num_layers, shipped.num_attention_heads, shipped.patch_size)


@pytest.mark.parametrize("argv, words", [
    (["--num-layers", "0"], ["--num-layers", ">= 1"]),
    (["--num-heads", "0"], ["--num-heads", ">= 1"]),
    (["--patch-size", "3"], ["--patch-size", "one of (1, 2, 4)", "got 3"]),
    (["--init", "FOLDER", "--num-layers", "6"], ["--num-layers", "--init", "leave them out"]),
    (["--init", "FOLDER", "--patch-size", "1"], ["--patch-size", "--init", "leave them out"]),
])
def test_architecture_flags_bad_input_is_a_one_line_error(tmp_path, capsys, trained, argv, words):
    argv = [trained if a == "FOLDER" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "out"), "--steps", "1", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out")


def test_init_from_a_folder_that_is_not_a_flow_pipeline_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "out"), "--init", str(tmp_path), "--steps", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--init" in err and "transformer/config.json" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out")  # checked before anything is written


def test_rectified_flow_pair_matches_the_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(20)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8, generator=gen)
    noise = torch.randn(3, 4, 8, 8, generator=gen)
    idx = torch.tensor([0, 7, 19])
    timesteps, sigmas = scheduler.timesteps[idx], scheduler.sigmas[idx]
    # the transformer's timestep is 1000 sigma, as in the pipeline
    torch.testing.assert_close(timesteps, sigmas * 1000)
    noisy, target = flow_training_pair(x0, noise, sigmas)
    torch.testing.assert_close(noisy, scheduler.scale_noise(x0, timesteps, noise))
    # float64 by hand
    s = sigmas.double().view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy.double(), (1 - s) * x0.double() + s * noise.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(target, noise - x0)
    # the target is the velocity the scheduler integrates: one Euler step with it lands on the next noisy latents
    for i in idx.tolist():
        scheduler.set_timesteps(20)
        scheduler._step_index = i
        x_t = (1 - scheduler.sigmas[i]) * x0 + scheduler.sigmas[i] * noise
        stepped = scheduler.step(noise - x0, scheduler.timesteps[i], x_t).prev_sample
        nxt = scheduler.sigmas[i + 1]
        torch.testing.assert_close(stepped, (1 - nxt) * x0 + nxt * noise, atol=1e-5, rtol=0)


def test_text_tower_is_the_toy_clip_with_identity_projection(components):
    from transformers import CLIPTextModel

    source = CLIPTextModel.from_pretrained(os.path.join(toy_pipeline.toy_pipeline_path(), "text_encoder")).float()
    encoder = load_toy_text_encoder(toy_pipeline.toy_pipeline_path())
    ids = components["tokenizer"](PROMPTS, padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        want = source(ids, output_hidden_states=True)
        got = encoder(ids, output_hidden_states=True)
    torch.testing.assert_close(got.text_embeds, want.pooler_output)
    torch.testing.assert_close(got.hidden_states[-2], want.hidden_states[-2])
    assert not any(p.requires_grad for p in encoder.parameters())
    # 16 tokens: CLIP is causal, so the first 16 hidden states are those of the usual 77-token padding
    ids77 = components["tokenizer"](PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        long = encoder(ids77, output_hidden_states=True)
    torch.testing.assert_close(long.hidden_states[-2][:, :16], got.hidden_states[-2], atol=1e-5, rtol=1e-5)
    assert max(len(components["tokenizer"](p).input_ids) for p in ("three crimson triangles", "three scarlet squares",
                                                                     "three purple triangles")) <= 16


def test_collapsed_zero_tokens_give_the_stock_forward(components):
    from diffusers import StableDiffusion3Pipeline
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    pipe = StableDiffusion3Pipeline(**components)
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False)
    assert prompt_embeds.shape == (4, 16 + SD3_MAX_SEQUENCE_LENGTH, 64) and pooled.shape == (4, 64)
    hidden, ours_pooled = encode_clip_prompts(components, PROMPTS)
    torch.testing.assert_close(hidden, prompt_embeds[:, :16])
    torch.testing.assert_close(ours_pooled, pooled)
    assert prompt_embeds[:, 16:].abs().max() == 0

    transformer = copy.deepcopy(components["transformer"])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 8, 8, generator=gen)
    t = torch.tensor([10.0, 300.0, 600.0, 990.0])
    with torch.no_grad():
        for p in transformer.parameters():  # away from the zero-initialised output layers
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        transformer.set_attn_processor(JointAttnProcessor2_0())
        want = transformer(hidden_states=x, encoder_hidden_states=prompt_embeds, pooled_projections=pooled,
                           timestep=t).sample
        transformer.set_attn_processor(RepeatedTokenJointAttnProcessor(SD3_MAX_SEQUENCE_LENGTH))
        got = transformer(hidden_states=x, encoder_hidden_states=training_context(hidden, SD3_MAX_SEQUENCE_LENGTH),
                          pooled_projections=pooled, timestep=t).sample
        transformer.set_attn_processor(RepeatedTokenJointAttnProcessor(1))
        one = transformer(hidden_states=x, encoder_hidden_states=training_context(hidden, SD3_MAX_SEQUENCE_LENGTH),
                          pooled_projections=pooled, timestep=t).sample
    assert want.abs().mean() > 0.1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (one - want).abs().max() > 1e-3  # the log(256) bias matters
    with pytest.raises(ValueError, match="repeats"):
        RepeatedTokenJointAttnProcessor(0)


def test_evaluate_runs_on_a_flow_pipeline(trained, capsys):
    from trl_safediffusion.toy.evaluate import main as evaluate_main

    evaluate_main(["--family", "sd3", "--pipeline", trained, "--images-per-split", "2", "--steps", "2",
                   "--splits", "eval_red", "--threads", "1"])
    report = json.loads(capsys.readouterr().out)
    assert report["eval_red"]["n"] == 2 and report["settings"]["family"] == "sd3"


def test_missing_flow_asset_says_how_to_train_it(tmp_path, monkeypatch):
    monkeypatch.setattr(toy_pipeline, "TOY_FLOW_PIPELINE_DIR", str(tmp_path / "toy-sd3"))
    with pytest.raises(FileNotFoundError, match="train_flow_pipeline"):
        toy_pipeline.load_toy_flow_pipeline()


def test_shipped_flow_pipeline_loads_and_samples():
    from diffusers import StableDiffusion3Pipeline

    pipe = toy_pipeline.load_toy_flow_pipeline()
    assert isinstance(pipe, StableDiffusion3Pipeline) and pipe.transformer.dtype == torch.float32
    out = pipe(["a blue circle", "three red squares"], num_inference_steps=4, guidance_scale=5.0,
               generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (2, 3, 32, 32) and torch.isfinite(out.images).all()
    assert not torch.allclose(out.images[0], out.images[1])


def test_toy_sampler_runs_the_zero_t5_tokens_as_one_and_gives_the_stock_images():
    """sample_toy_images (the demo's and the evaluation's sampler) calls a StableDiffusion3Pipeline without T5 with
    one zero token and a log(256) attention bias: the stock call's images, and the stock processors afterwards."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    from trl_safediffusion.toy.sampling import noise_seed, sample_toy_images

    pipe = toy_pipeline.load_toy_flow_pipeline()
    prompts = ["two red circles", "a blue square", "three green triangles", ""]
    ours = sample_toy_images(pipe, prompts, num_inference_steps=6, guidance_scale=5.0, seed=3)
    gens = [torch.Generator().manual_seed(noise_seed(3, i)) for i in range(len(prompts))]
    stock = pipe(prompts, num_inference_steps=6, guidance_scale=5.0, generator=gens, output_type="pt").images
    assert stock.std() > 0.1
    torch.testing.assert_close(ours, stock, atol=1e-4, rtol=0)
    assert all(isinstance(p, JointAttnProcessor2_0) for p in pipe.transformer.attn_processors.values())
