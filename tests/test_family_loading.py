"""`load_ddpo_pipeline` picks each model family's adapter from the diffusers pipeline class (a built pipeline, a saved
folder's model_index.json, a Hub id), the CLI trains every family from a YAML file, the model card loads the model
with the family's stock pipeline class, and every shipped recipe parses."""

import glob
import json
import os

import pytest
import yaml

from trl_safediffusion import (
    DefaultDDPOStableDiffusion3Pipeline,
    DefaultDDPOStableDiffusionPipeline,
    load_ddpo_pipeline,
)
from trl_safediffusion.pipelines import MODEL_FAMILIES, model_family
from trl_safediffusion.testing_utils import tiny_sd3_pipeline, tiny_sd_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(REPO, "examples", "recipes", "*.yaml")))


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline(seed=0).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd3")
    tiny_sd3_pipeline(seed=0).save_pretrained(str(folder))  # without T5: text_encoder_3 is saved as null
    return str(folder)


# ---------------------------------------------------------------------------------------------------- the loader
def test_a_built_pipeline_object_is_wrapped_by_its_family_adapter():
    sd = load_ddpo_pipeline(tiny_sd_pipeline(), lora_rank=2)
    assert isinstance(sd, DefaultDDPOStableDiffusionPipeline) and sd.use_lora and sd.lora_rank == 2
    sd3 = load_ddpo_pipeline(tiny_sd3_pipeline(), use_lora=False, sample_height=16, sample_width=8)
    assert isinstance(sd3, DefaultDDPOStableDiffusion3Pipeline) and not sd3.use_lora
    assert sd3.latent_shape()[1:] == (8, 4)  # 16 x 8 px with a VAE factor of 2
    assert (sd.diffusers_pipeline_class_name, list(sd.family_tags)) == ("StableDiffusionPipeline", ["stable-diffusion"])
    assert (sd3.diffusers_pipeline_class_name, list(sd3.family_tags)) == ("StableDiffusion3Pipeline", ["stable-diffusion-3"])


def test_a_saved_folder_is_wrapped_by_the_class_in_its_model_index(sd_dir, sd3_dir):
    sd = load_ddpo_pipeline(sd_dir, use_lora=True)
    assert type(sd) is DefaultDDPOStableDiffusionPipeline and sd.pretrained_model_name == sd_dir
    sd3 = load_ddpo_pipeline(sd3_dir, use_lora=True, lora_rank=2)
    assert type(sd3) is DefaultDDPOStableDiffusion3Pipeline and sd3.lora_rank == 2
    assert sd3.sd_pipeline.text_encoder_3 is None  # the component saved as null loads as None
    assert os.path.samefile(sd3.pretrained_model_name, sd3_dir)
    assert model_family(sd3_dir).pipeline_class == "StableDiffusion3Pipeline"


def test_an_already_wrapped_pipeline_is_returned_as_is():
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(), use_lora=True)
    assert load_ddpo_pipeline(pipe) is pipe
    with pytest.raises(ValueError, match="use_lora"):
        load_ddpo_pipeline(pipe, use_lora=False)


def test_an_unsupported_class_names_it_and_the_supported_ones(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(ValueError, match="KandinskyV22Pipeline") as err:
        load_ddpo_pipeline(str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert all(f.pipeline_class in message for f in MODEL_FAMILIES)

    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(ValueError, match="DDPMPipeline is not a supported pipeline class"):
        load_ddpo_pipeline(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()))
    with pytest.raises(ValueError, match="name_or_pipeline must be .* got int"):
        load_ddpo_pipeline(3)


def test_a_folder_that_is_not_a_pipeline_and_a_missing_hub_id_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="has no model_index.json"):
        load_ddpo_pipeline(str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError) as err:
        load_ddpo_pipeline("nobody-here/no-such-model")
    message = str(err.value)
    assert message.startswith("name_or_pipeline: ") and "no-such-model" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message


def test_an_option_the_adapter_does_not_take_is_named():
    with pytest.raises(ValueError, match="^guidance: the Stable Diffusion family's adapter"):
        load_ddpo_pipeline(tiny_sd_pipeline(), guidance=3.5)
    # every family takes its training resolution
    assert load_ddpo_pipeline(tiny_sd_pipeline(), sample_height=16, sample_width=32).latent_shape() == (4, 8, 16)


def test_the_hub_id_is_resolved_from_its_model_index(monkeypatch, sd3_dir):
    calls = []

    def fake_download(repo_id, filename, revision=None, **kwargs):
        calls.append((repo_id, filename, revision))
        return os.path.join(sd3_dir, "model_index.json")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    assert model_family("someone/sd35", revision="v1").pipeline_class == "StableDiffusion3Pipeline"
    assert calls == [("someone/sd35", "model_index.json", "v1")]


def test_every_family_s_adapter_is_named_and_tagged():
    by_class = {f.pipeline_class: f for f in MODEL_FAMILIES}
    assert by_class["FluxPipeline"].adapter == "trl_safediffusion.pipelines.flux.DefaultDDPOFluxPipeline"
    assert by_class["FluxPipeline"].tags == ("flux",)
    assert by_class["StableDiffusionXLPipeline"].adapter == (
        "trl_safediffusion.pipelines.stable_diffusion_xl.DefaultDDPOStableDiffusionXLPipeline")
    assert by_class["StableDiffusionXLPipeline"].tags == ("stable-diffusion-xl",)


# ------------------------------------------------------------------- families merged later (skipped until then)
@pytest.mark.parametrize("pipeline_class, module_name, adapter_name, tag", [
    ("StableDiffusionXLPipeline", "stable_diffusion_xl", "DefaultDDPOStableDiffusionXLPipeline", "stable-diffusion-xl"),
    ("FluxPipeline", "flux", "DefaultDDPOFluxPipeline", "flux"),
])
def test_sdxl_and_flux_are_chosen_from_their_model_index_once_merged(tmp_path, pipeline_class, module_name,
                                                                      adapter_name, tag):
    module = pytest.importorskip(f"trl_safediffusion.pipelines.{module_name}")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class}))
    family = model_family(str(tmp_path))
    assert family.adapter_class() is getattr(module, adapter_name) and tag in family.tags
    accepted = family.accepted_kwargs()
    assert accepted is None or {"use_lora", "lora_rank", "lora_alpha", "sample_height", "sample_width"} <= accepted
    if pipeline_class == "FluxPipeline":
        assert accepted is None or "guidance" in accepted  # the recipe's `guidance: 3.5`


@pytest.mark.parametrize("helper, module_name, tag", [
    ("tiny_sdxl_pipeline", "stable_diffusion_xl", "stable-diffusion-xl"),
    ("tiny_flux_pipeline", "flux", "flux"),
])
def test_built_sdxl_and_flux_pipelines_are_wrapped_once_merged(helper, module_name, tag):
    pytest.importorskip(f"trl_safediffusion.pipelines.{module_name}")
    from trl_safediffusion import testing_utils

    if not hasattr(testing_utils, helper):
        pytest.skip(f"testing_utils.{helper} is not there yet")
    built = getattr(testing_utils, helper)()
    pipe = load_ddpo_pipeline(built, use_lora=True, lora_rank=2)
    assert pipe.diffusers_pipeline_class_name == type(built).__name__ and tag in pipe.family_tags
    assert load_ddpo_pipeline(pipe) is pipe


# ----------------------------------------------------------------------------------------------------------- CLI
def _sd3_recipe(tmp_path, sd3_dir, **extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "pretrained_model": sd3_dir, "dataset": str(prompts), "reward": "brightness", "num_epochs": 1,
        "sample_num_steps": 2, "sample_eta": 0.7, "sample_batch_size": 2, "sample_num_batches_per_epoch": 1,
        "train_batch_size": 2, "num_generations": 2, "mixed_precision": "no", "save_freq": 0,
        "sample_guidance_scale": 2.0, "lora_rank": 2, "log_images": False, "sample_height": 16, "sample_width": 16,
        **extra,
    }))
    return recipe


def test_cli_trains_sd3_from_yaml_and_its_card_loads_it_with_its_pipeline_class(tmp_path, sd3_dir):
    from trl_safediffusion.cli import main

    out = tmp_path / "out"
    code = main(["train", "--config", str(_sd3_recipe(tmp_path, sd3_dir)), "--logdir", str(tmp_path / "logs"),
                 "--output_dir", str(out)])
    assert code == 0
    assert os.path.isfile(out / "pytorch_lora_weights.safetensors")
    saved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert saved["sample_height"] == 16 and saved["sample_width"] == 16
    card = (out / "README.md").read_text()
    assert "from diffusers import StableDiffusion3Pipeline" in card
    assert "StableDiffusion3Pipeline.from_pretrained" in card and "load_lora_weights" in card
    assert "StableDiffusionPipeline" not in card
    assert "the transformer of" in card and "Flow SDE noise level (eta)" in card
    metadata = yaml.safe_load(card.split("---")[1])
    assert "stable-diffusion-3" in metadata["tags"] and metadata["pipeline_tag"] == "text-to-image"


def test_cli_names_an_option_the_family_does_not_take(tmp_path, sd_dir, capsys):
    from trl_safediffusion.cli import main

    recipe = _sd3_recipe(tmp_path, sd_dir, guidance=3.5)  # FLUX's distilled guidance: no other family takes it
    assert main(["train", "--config", str(recipe), "--logdir", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert "guidance" in lines[0] and "Stable Diffusion family" in lines[0]


def test_cli_names_an_unsupported_pipeline_class(tmp_path, capsys):
    from trl_safediffusion.cli import main

    folder = tmp_path / "kandinsky"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    recipe = _sd3_recipe(tmp_path, str(folder))
    assert main(["train", "--config", str(recipe), "--logdir", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err
    assert "pretrained_model: KandinskyV22Pipeline is not a supported pipeline class" in err
    assert "StableDiffusion3Pipeline" in err


# ------------------------------------------------------------------------------------------------------- recipes
def test_the_family_recipes_are_shipped():
    names = {os.path.basename(r) for r in RECIPES}
    assert {"safediffusion_r1_sdxl_lora.yaml", "safediffusion_r1_sd35_medium_lora.yaml",
            "safediffusion_r1_flux_dev_lora.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_every_recipe_parses(recipe):
    if os.path.basename(recipe).startswith("toy_"):  # the demo's own arguments (`trl-safediffusion demo`)
        from trl_safediffusion.toy.demo import build_parser

        build_parser().parse_args_and_config(["--config", recipe])
        return
    from trl_safediffusion.cli import parse_train_args

    config, model, data, reward, output = parse_train_args(["--config", recipe])
    assert model.pretrained_model and data.dataset and reward.reward == "clip_steering"
    if "r1_" in os.path.basename(recipe):
        assert reward.anchors == "nudity-compact"


def test_the_family_recipes_set_the_family_s_sampling():
    from trl_safediffusion.cli import parse_train_args

    def parsed(name):
        return parse_train_args(["--config", os.path.join(REPO, "examples", "recipes", name)])

    config, model, *_ = parsed("safediffusion_r1_sd35_medium_lora.yaml")
    assert model.pretrained_model == "stabilityai/stable-diffusion-3.5-medium" and model.use_lora
    assert (config.sample_eta, config.sample_guidance_scale, model.sample_height, model.sample_width) == (
        0.7, 4.5, 512, 512)
    config, model, *_ = parsed("safediffusion_r1_flux_dev_lora.yaml")
    assert model.pretrained_model == "black-forest-labs/FLUX.1-dev" and model.use_lora
    assert (config.sample_guidance_scale, model.guidance, model.sample_height) == (1.0, 3.5, 512)
    config, model, *_ = parsed("safediffusion_r1_sdxl_lora.yaml")
    assert model.pretrained_model == "stabilityai/stable-diffusion-xl-base-1.0" and model.use_lora


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_cli_trains_sdxl_and_flux_from_yaml(tmp_path, family):
    from trl_safediffusion import testing_utils
    from trl_safediffusion.cli import main

    folder = tmp_path / family
    getattr(testing_utils, f"tiny_{family}_pipeline")(seed=0).save_pretrained(str(folder))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "pretrained_model": str(folder), "dataset": str(prompts), "reward": "brightness", "num_epochs": 1,
        "sample_num_steps": 2, "sample_eta": 0.7 if family == "flux" else 1.0, "sample_batch_size": 2,
        "sample_num_batches_per_epoch": 1, "train_batch_size": 2, "num_generations": 2, "mixed_precision": "no",
        "save_freq": 0, "sample_guidance_scale": 1.0 if family == "flux" else 2.0, "lora_rank": 2,
        "log_images": False,
    }))
    out = tmp_path / "out"
    assert main(["train", "--config", str(recipe), "--logdir", str(tmp_path / "logs"), "--output_dir", str(out)]) == 0
    assert os.path.isfile(out / "pytorch_lora_weights.safetensors")
    card = (out / "README.md").read_text()
    stock = {"sdxl": "StableDiffusionXLPipeline", "flux": "FluxPipeline"}[family]
    assert f"{stock}.from_pretrained" in card and "load_lora_weights" in card
    tag = {"sdxl": "stable-diffusion-xl", "flux": "flux"}[family]
    assert tag in yaml.safe_load(card.split("---")[1])["tags"]


@pytest.mark.parametrize("family", ["sd15", "sdxl_lora", "sd35_medium_lora", "flux_dev_lora"])
def test_every_family_has_a_fast_recipe_that_differs_only_in_its_efficiency_settings(family):
    from trl_safediffusion.cli import parse_train_args

    def parsed(name):
        return parse_train_args(["--config", os.path.join(REPO, "examples", "recipes", name)])

    full, *rest_full = parsed(f"safediffusion_r1_{family}.yaml")
    fast, *rest_fast = parsed(f"safediffusion_r1_{family}_fast.yaml")
    assert fast.sample_sde_window == "fixed" and fast.sample_sde_window_start == 0
    assert 0 < fast.sample_sde_window_size < fast.sample_num_steps
    assert fast.train_timesteps_per_forward == "auto"
    efficiency = {"sample_sde_window", "sample_sde_window_start", "sample_sde_window_size", "sample_num_steps",
                  "train_timestep_fraction", "train_timesteps_per_forward", "exp_name", "output_dir"}
    differ = {k for k, v in full.to_dict().items() if fast.to_dict()[k] != v}
    assert differ <= efficiency, differ - efficiency
    assert [vars(a) for a in rest_full[:3]] == [vars(a) for a in rest_fast[:3]]  # same model, data and reward
