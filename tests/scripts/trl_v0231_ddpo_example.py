"""The structure of TRL v0.23.1's `examples/scripts/ddpo.py` (config from the command line, a pipeline with LoRA, a reward
function, `prompt_fn`, an image-logging hook, `train()`, `save_model()` and the optional push), kept as a TRL user
wrote it; only the import line is changed. The aesthetic scorer, which downloads CLIP, is replaced by a local scorer
with the same call shape so the script runs offline.

    python tests/scripts/trl_v0231_ddpo_example.py --pretrained_model <folder> --num_epochs 2 ...
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import HfArgumentParser

from trl_safediffusion import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline  # was: from trl import ...


@dataclass
class ScriptArguments:
    pretrained_model: str = field(default="runwayml/stable-diffusion-v1-5", metadata={"help": "Pretrained model to use."})
    pretrained_revision: str = field(default="main", metadata={"help": "Pretrained model revision to use."})
    hf_hub_model_id: str = field(
        default="ddpo-finetuned-stable-diffusion", metadata={"help": "HuggingFace repo to save model weights to."}
    )
    use_lora: bool = field(default=True, metadata={"help": "Whether to use LoRA."})


def aesthetic_scorer():
    def _fn(images, prompts, metadata):
        images = (images * 255).round().clamp(0, 255).to(torch.uint8)
        scores = images.float().mean(dim=(1, 2, 3)) / 255.0
        return scores, {}

    return _fn


animals = ["cat", "dog", "horse", "monkey", "rabbit", "zebra"]


def prompt_fn():
    return np.random.choice(animals), {}


def image_outputs_logger(image_data, global_step, accelerate_logger):
    result = {}
    images, prompts, _, rewards, _ = image_data[-1]
    for i, image in enumerate(images):
        prompt = prompts[i]
        reward = rewards[i].item()
        result[f"{prompt:.25} | {reward:.2f}"] = image.unsqueeze(0).float()
    accelerate_logger.log_images(result, step=global_step)


if __name__ == "__main__":
    parser = HfArgumentParser((ScriptArguments, DDPOConfig))
    script_args, training_args = parser.parse_args_into_dataclasses()
    training_args.project_kwargs = {
        "logging_dir": "./logs",
        "automatic_checkpoint_naming": True,
        "total_limit": 5,
        "project_dir": "./save",
    }

    pipeline = DefaultDDPOStableDiffusionPipeline(
        script_args.pretrained_model,
        pretrained_model_revision=script_args.pretrained_revision,
        use_lora=script_args.use_lora,
    )

    trainer = DDPOTrainer(
        training_args,
        aesthetic_scorer(),
        prompt_fn,
        pipeline,
        image_samples_hook=image_outputs_logger,
    )

    trainer.train()

    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(script_args.hf_hub_model_id)
