"""TRL's DDPO aesthetic example, ported to trl-safediffusion (the migration path from `trl<0.24`).

Fine-tunes Stable Diffusion v1.5 with LoRA so that images of animals score higher under the LAION aesthetic predictor
(an MLP on CLIP ViT-L/14 image embeddings). Compared with the TRL script the imports change, and the arguments are read
by `SafeDiffusionParser` (a `trl.TrlParser`: also `--config recipe.yaml` with an `env:` mapping, `--field-name` and
`--no_field`; a mistake is one line naming the field):

    - from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline
    + from trl_safediffusion.ddpo_config import DDPOConfig
    + from trl_safediffusion.ddpo_trainer import DDPOTrainer
    + from trl_safediffusion.pipelines.stable_diffusion import DefaultDDPOStableDiffusionPipeline
    - HfArgumentParser((ScriptArguments, DDPOConfig)).parse_args_into_dataclasses()
    + SafeDiffusionParser((ScriptArguments, DDPOConfig)).parse_args_and_config()

Launch (one GPU; every DDPOConfig field is a flag):

    accelerate launch --config_file examples/accelerate_configs/single_gpu.yaml examples/ddpo_aesthetic.py \
        --num_epochs 200 --train_gradient_accumulation_steps 1 --sample_num_steps 50 --sample_batch_size 6 \
        --train_batch_size 3 --sample_num_batches_per_epoch 4 --per_prompt_stat_tracking True \
        --per_prompt_stat_tracking_buffer_size 32 --tracker_project_name stable_diffusion_training --log_with wandb

Needs the Hub (CLIP ViT-L/14 and `trl-lib/ddpo-aesthetic-predictor`).
"""

import random
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import CLIPModel, CLIPProcessor

from trl_safediffusion.argparsing import SafeDiffusionParser
from trl_safediffusion.cli import process_state
from trl_safediffusion.ddpo_config import DDPOConfig
from trl_safediffusion.ddpo_trainer import DDPOTrainer
from trl_safediffusion.hooks import ImageGridHook
from trl_safediffusion.pipelines.stable_diffusion import DefaultDDPOStableDiffusionPipeline

ANIMALS = ("cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird", "sheep", "deer", "cow", "goat", "lion",
           "frog", "chicken", "duck", "goose", "bee", "pig", "turkey", "fly", "llama", "camel", "bat", "gorilla",
           "hedgehog", "kangaroo")


@dataclass
class ScriptArguments:
    pretrained_model: str = field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5", metadata={"help": "Model to fine-tune."}
    )
    pretrained_revision: str = field(default="main", metadata={"help": "Revision of the model."})
    use_lora: bool = field(default=True, metadata={"help": "Train LoRA adapters."})
    hf_hub_aesthetic_model_id: str = field(
        default="trl-lib/ddpo-aesthetic-predictor", metadata={"help": "Hub repo of the aesthetic MLP."}
    )
    hf_hub_aesthetic_model_filename: str = field(
        default="aesthetic-model.pth", metadata={"help": "File of the aesthetic MLP weights in that repo."}
    )
    clip_model: str = field(default="openai/clip-vit-large-patch14", metadata={"help": "CLIP of the predictor."})


class AestheticMLP(nn.Module):
    """The LAION aesthetic predictor head: 768 -> 1024 -> 128 -> 64 -> 16 -> 1 (dropout between the first layers)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(768, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2), nn.Linear(128, 64),
            nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embeds):
        return self.layers(embeds)


class AestheticReward:
    """Reward object owning its models: aesthetic score of L2-normalised CLIP image embeddings."""

    def __init__(self, clip_model: str, repo_id: str, filename: str, device):
        from huggingface_hub import hf_hub_download

        self.clip = CLIPModel.from_pretrained(clip_model).to(device).eval().requires_grad_(False)
        self.processor = CLIPProcessor.from_pretrained(clip_model)
        self.mlp = AestheticMLP()
        state = torch.load(hf_hub_download(repo_id, filename), map_location="cpu", weights_only=True)
        self.mlp.load_state_dict(state)
        self.mlp.to(device).eval().requires_grad_(False)
        self.device = device

    @torch.no_grad()
    def __call__(self, images, prompts, metadata):
        # images: (B, 3, H, W) float in [0, 1]
        pixels = self.processor(images=list((images * 255).round().to(torch.uint8).cpu()), return_tensors="pt")
        out = self.clip.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
        embeds = out if isinstance(out, torch.Tensor) else out.pooler_output
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        return self.mlp(embeds.float()).squeeze(1), {}


def prompt_fn():
    return random.choice(ANIMALS), {}


def parse_args(argv=None) -> tuple[ScriptArguments, DDPOConfig]:
    """The script's arguments and the DDPO config, from `argv` (default: the command line)."""
    return SafeDiffusionParser((ScriptArguments, DDPOConfig)).parse_args_and_config(argv)


def main():
    script_args, config = parse_args()
    config.output_dir = config.output_dir or "outputs/ddpo-aesthetic"  # where the LoRA weights go (--output_dir)
    config.project_kwargs = {"logging_dir": "./logs", "automatic_checkpoint_naming": True, "total_limit": 5,
                             "project_dir": "./save", **config.project_kwargs}
    pipeline = DefaultDDPOStableDiffusionPipeline(
        script_args.pretrained_model, pretrained_model_revision=script_args.pretrained_revision,
        use_lora=script_args.use_lora,
    )
    device = process_state().device  # this process's device, as the trainer's accelerator will pick it
    reward = AestheticReward(script_args.clip_model, script_args.hf_hub_aesthetic_model_id,
                             script_args.hf_hub_aesthetic_model_filename, device)
    trainer = DDPOTrainer(config, reward, prompt_fn, pipeline, image_samples_hook=ImageGridHook())
    trainer.train()  # with --push_to_hub True, also pushes the final model to --hub_model_id
    trainer.save_pretrained()  # to config.output_dir
    trainer.end_training()


if __name__ == "__main__":
    main()
