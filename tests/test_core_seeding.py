"""`config.seed` alone decides a run: the caller's global RNG when the pipeline is built changes nothing."""

import torch
from datasets import Dataset

from conftest import brightness_reward
from trl_safediffusion import DefaultDDPOStableDiffusionPipeline, SafeDDPOGRPOConfig, SafeDDPOGRPOTrainer
from trl_safediffusion.testing_utils import tiny_sd_pipeline

PROMPTS = Dataset.from_dict({"prompt": [f"object number {i}" for i in range(4)], "unsafe": [True, False] * 2})


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    GradientState._reset_state()


def _trainer(logdir, global_seed, seed=0):
    _reset_accelerate()
    base = tiny_sd_pipeline(seed=0)
    torch.manual_seed(global_seed)  # whatever the caller's script did before building the training pipeline
    pipe = DefaultDDPOStableDiffusionPipeline(base, use_lora=True)
    config = SafeDDPOGRPOConfig(
        num_epochs=2, sample_num_steps=3, sample_batch_size=4, sample_num_batches_per_epoch=1, train_batch_size=2,
        num_generations=2, mixed_precision="no", train_learning_rate=1e-3, train_clip_range=0.2, save_freq=0,
        logdir=str(logdir), exp_name="run", seed=seed,
    )
    return SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=PROMPTS)


def _lora(trainer):
    return {n: p.detach().clone() for n, p in trainer.sd_pipeline.unet.named_parameters() if "lora" in n}


def test_same_seed_same_lora_init_and_same_trained_weights(tmp_path):
    a = _trainer(tmp_path / "a", global_seed=1)
    b = _trainer(tmp_path / "b", global_seed=2)
    init_a, init_b = _lora(a), _lora(b)
    assert init_a and init_a.keys() == init_b.keys()
    for name in init_a:
        torch.testing.assert_close(init_a[name], init_b[name], rtol=0, atol=0, msg=name)
    assert any(float(v.abs().sum()) > 0 for n, v in init_a.items() if "lora_A" in n)  # A is drawn, not zero
    assert all(float(v.abs().sum()) == 0 for n, v in init_a.items() if "lora_B" in n)  # B starts at zero

    a.train()
    b.train()
    trained_a, trained_b = _lora(a), _lora(b)
    assert any(not torch.equal(trained_a[n], init_a[n]) for n in init_a)  # training moved the adapters
    for name in trained_a:
        torch.testing.assert_close(trained_a[name], trained_b[name], rtol=0, atol=0, msg=name)


def test_another_seed_draws_other_adapters(tmp_path):
    a = _trainer(tmp_path / "a", global_seed=1, seed=0)
    c = _trainer(tmp_path / "c", global_seed=1, seed=1)
    name = next(n for n in _lora(a) if "lora_A" in n)
    assert not torch.equal(_lora(a)[name], _lora(c)[name])


def test_loaded_lora_weights_are_kept(tmp_path):
    """Adapters that already hold weights (loaded from a LoRA file) are not re-drawn."""
    a = _trainer(tmp_path / "a", global_seed=1)
    a.train()
    a.sd_pipeline.save_lora(str(tmp_path / "lora"))
    trained = _lora(a)

    _reset_accelerate()
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_sd_pipeline(seed=0), use_lora=True)
    pipe.load_lora_into_unet(str(tmp_path / "lora"))
    assert not pipe.lora_weights_untrained
    config = SafeDDPOGRPOConfig(
        num_epochs=1, sample_num_steps=3, sample_batch_size=4, sample_num_batches_per_epoch=1, train_batch_size=2,
        num_generations=2, mixed_precision="no", save_freq=0, logdir=str(tmp_path / "d"), exp_name="run",
    )
    d = SafeDDPOGRPOTrainer(config, brightness_reward, pipe, train_dataset=PROMPTS)
    for name, value in _lora(d).items():
        torch.testing.assert_close(value, trained[name], msg=name)
