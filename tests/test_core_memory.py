"""`train_timesteps_per_forward="auto"`: the activation measurement, the budget and the trainer's choice."""

import pytest
import torch
from datasets import Dataset

from conftest import brightness_reward
from trl_safediffusion import DefaultDDPOStableDiffusionPipeline, SafeDDPOGRPOConfig, SafeDDPOGRPOTrainer
from trl_safediffusion.argparsing import SafeDiffusionParser
from trl_safediffusion.memory import (
    BACKWARD_HEADROOM,
    memory_budget_bytes,
    saved_activation_bytes,
    timesteps_per_forward_for_budget,
)
from trl_safediffusion.testing_utils import tiny_sd_pipeline

PROMPTS = Dataset.from_dict({"prompt": [f"a photo of object {i}" for i in range(4)]})


def test_saved_activation_bytes_by_hand():
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    # W's gradient needs x (2 x 4 float32 = 32 bytes); tanh keeps its output (2 x 3 = 24 bytes); sum keeps nothing
    assert saved_activation_bytes(lambda: lin(x).sum()) == 32
    assert saved_activation_bytes(lambda: torch.tanh(lin(x)).sum()) == 32 + 24
    # with x trainable the weight is saved too (48 bytes): it exists anyway, so `exclude` leaves it out
    x.requires_grad_(True)
    assert saved_activation_bytes(lambda: lin(x).sum()) == 32 + 48
    assert saved_activation_bytes(lambda: lin(x).sum(), exclude=[lin]) == 32
    # the measurement runs no backward: no gradient appears
    assert lin.weight.grad is None and x.grad is None


def test_budget_arithmetic():
    assert timesteps_per_forward_for_budget(100, int(100 * BACKWARD_HEADROOM * 3), 10) == 3
    assert timesteps_per_forward_for_budget(100, 10, 10) == 1  # nothing fits: one at a time
    assert timesteps_per_forward_for_budget(100, 10**12, 10) == 10  # everything fits: all trained steps
    assert memory_budget_bytes("cpu", 2.0) == 2 * 10**9
    assert memory_budget_bytes("cpu") > 0


def _config(tmp_path, name, **kw):
    base = dict(num_epochs=1, sample_num_steps=6, sample_batch_size=8, sample_num_batches_per_epoch=1,
                train_batch_size=4, num_generations=4, mixed_precision="no", save_freq=0, sample_guidance_scale=3.0,
                train_learning_rate=1.0, train_adam_epsilon=1.0, train_adam_weight_decay=0.0, train_clip_range=0.2,
                logdir=str(tmp_path / name))
    base.update(kw)
    return SafeDDPOGRPOConfig(**base)


def _train(config):
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(seed=0), use_lora=False)
    trainer = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=PROMPTS)
    trainer.train()
    return trainer, {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}


def test_auto_stacks_what_fits_the_budget_with_the_same_update(tmp_path):
    assert SafeDDPOGRPOConfig().train_timesteps_per_forward == "auto"
    big, big_params = _train(_config(tmp_path, "big", train_memory_budget_gb=1000.0))
    k, measured = big.num_train_timesteps, big.activation_bytes_per_timestep
    assert k == 5 and big.timesteps_per_forward == k and measured > 0
    # a budget for exactly two timesteps' activations
    budget_gb = measured * BACKWARD_HEADROOM * 2.5 / 1e9
    two, two_params = _train(_config(tmp_path, "two", train_memory_budget_gb=budget_gb))
    assert two.activation_bytes_per_timestep == measured and two.timesteps_per_forward == 2
    logged = [r["train/timesteps_per_forward"] for r in two.log_history if "train/timesteps_per_forward" in r]
    assert logged and set(logged) == {2}
    one, one_params = _train(_config(tmp_path, "one", train_timesteps_per_forward=1))
    assert one.timesteps_per_forward is None  # a fixed value is used as given, nothing is measured
    assert not any("train/timesteps_per_forward" in r for r in one.log_history)
    # the stack changes the batching, not the gradient. Adam's first step is lr * g / (|g| + eps): with eps = 1 it is
    # close to lr * g, so the updates compare the gradients (a small eps would make it sign(g) and amplify rounding)
    start = {n: p.detach().clone() for n, p in tiny_sd_pipeline(seed=0).unet.named_parameters()}

    def update(params):
        return torch.cat([(params[n] - start[n]).flatten() for n in start])

    ref = update(one_params)
    assert ref.norm() > 0
    for params in (two_params, big_params):
        assert (update(params) - ref).norm() / ref.norm() < 1e-5


@pytest.mark.parametrize("bad", [0, -2, "fast", 1.5, True])
def test_bad_timesteps_per_forward_names_the_field(tmp_path, bad):
    with pytest.raises(ValueError, match="train_timesteps_per_forward must be a positive integer or 'auto'"):
        _config(tmp_path, "bad", train_timesteps_per_forward=bad)
    with pytest.raises(ValueError, match="train_memory_budget_gb"):
        _config(tmp_path, "bad", train_memory_budget_gb=-1.0)


def test_parser_reads_auto_and_integers(tmp_path):
    parser = SafeDiffusionParser([SafeDDPOGRPOConfig])
    (config,) = parser.parse_args_and_config(["--train_timesteps_per_forward", "3", "--logdir", str(tmp_path)])
    assert config.train_timesteps_per_forward == 3
    path = tmp_path / "c.yaml"
    path.write_text("train_timesteps_per_forward: auto\ntrain_memory_budget_gb: 2\n")
    (config,) = parser.parse_args_and_config(["--config", str(path), "--logdir", str(tmp_path)])
    assert config.train_timesteps_per_forward == "auto" and config.train_memory_budget_gb == 2.0
    path.write_text("train_timesteps_per_forward: 6\n")
    (config,) = parser.parse_args_and_config(["--config", str(path), "--logdir", str(tmp_path)])
    assert config.train_timesteps_per_forward == 6
