import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))


@pytest.fixture(autouse=True)
def _reset_accelerate_state():
    """Each trainer builds its own Accelerator; accelerate keeps a process-wide singleton state."""
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    GradientState._reset_state()


def brightness_reward(images, prompts, metadata):
    """Mean pixel value per image: a simple reward with a known direction."""
    return images.float().mean(dim=(1, 2, 3)), {}


@pytest.fixture
def tiny_pipeline():
    from trl_safediffusion.testing_utils import tiny_sd_pipeline

    return tiny_sd_pipeline(seed=0)
