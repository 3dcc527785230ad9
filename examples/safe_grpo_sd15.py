"""SafeDiffusion-R1 (arXiv 2605.18719): online GRPO safety post-training of Stable Diffusion v1.5 with the CLIP
steering reward, on the SafeDiffusion-R1 prompt set.

Paper recipe (full UNet fine-tune, bf16, 8 GPUs):

    accelerate launch --config_file examples/accelerate_configs/multi_gpu_8.yaml examples/safe_grpo_sd15.py \
        --config examples/recipes/safediffusion_r1_sd15.yaml

LoRA on one GPU:

    accelerate launch --config_file examples/accelerate_configs/single_gpu.yaml examples/safe_grpo_sd15.py \
        --config examples/recipes/safediffusion_r1_sd15_lora.yaml

Any field can be overridden on the command line (`--train_learning_rate 5e-6 --alpha 0.7`, or `--train-learning-rate`;
`--no_use_lora` for a boolean), and a recipe's `env:` mapping sets environment variables, as with `trl.TrlParser`;
`--help` lists them all.
The same run without this script: `accelerate launch ... -m trl_safediffusion.cli train --config <recipe>`.
"""

import os
import sys

from trl_safediffusion.cli import build_reward, configure_logging, parse_train_args, process_state
from trl_safediffusion.data import load_prompt_dataset
from trl_safediffusion.grpo_trainer import SafeDDPOGRPOTrainer
from trl_safediffusion.hooks import ImageGridHook
from trl_safediffusion.pipelines.stable_diffusion import DefaultDDPOStableDiffusionPipeline


def main():
    argv = configure_logging(sys.argv[1:])  # --log_level info shows each step (default: warnings only)
    config, model_args, data_args, reward_args, out_args = parse_train_args(argv, exit_on_error=True)
    # accelerate's per-process state, created as the trainer creates it: torchrun ranks on CPU then join one job
    state = process_state()

    # 1. prompts: unsafe and benign captions in a `prompt` column (other columns reach the reward as metadata)
    dataset = load_prompt_dataset(data_args.dataset, prompt_column=config.prompt_column, split=data_args.dataset_split,
                                  config_name=data_args.dataset_config)
    config.prompt_column = "prompt"  # load_prompt_dataset renames the prompt column to `prompt`

    # 2. reward: cos(E_img(x), normalize(E_txt(p) + alpha * v_safe)), on this process's device
    reward = build_reward(reward_args, device=state.device)

    # 3. the policy: SD v1.5 sampled with DDIM (eta = 1) so that every step has a log-probability
    pipeline = DefaultDDPOStableDiffusionPipeline(
        model_args.pretrained_model,
        pretrained_model_revision=model_args.pretrained_revision,
        use_lora=model_args.use_lora,
        lora_rank=model_args.lora_rank,
        lora_alpha=model_args.lora_alpha,
        trainable_modules=model_args.trainable_modules,
    )

    # 4. train, logging a captioned grid of samples with their rewards
    hook = ImageGridHook(every_n_calls=out_args.log_images_every) if out_args.log_images else None
    trainer = SafeDDPOGRPOTrainer(config, reward, pipeline, train_dataset=dataset, image_samples_hook=hook)
    trainer.train()

    # 5. save in diffusers format (full pipeline, or LoRA weights) with a model card; push if configured
    trainer.save_pretrained(config.output_dir or os.path.join(trainer.project_dir, "final_model"),
                            fuse_lora=out_args.fuse_lora)
    trainer.end_training()  # finish the W&B run / close the TensorBoard writer


if __name__ == "__main__":
    main()
