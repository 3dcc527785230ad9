"""Fixtures that point the real `huggingface_hub`, `diffusers` and `datasets` clients at the fake Hub of `hub_server.py`.

The clients read `HF_ENDPOINT`, `HF_HUB_OFFLINE` and `HF_HOME` into module constants when they are imported, which
in a test session has already happened (and `make test` runs with `HF_HUB_OFFLINE=1`). So besides the environment we
set those module constants for the duration of a test with `monkeypatch`; no client method is replaced. The list is
explicit: if a client starts reading a new constant, `test_hub_requests_reach_the_fake_server` fails.

Use it in a test module with `from conftest_hub import fake_hub, hub_token  # noqa: F401`.
"""

from __future__ import annotations

import os

import pytest

from hub_server import FakeHub

FAKE_TOKEN = "hf_fakeTokenForTests0123456789abcdef"


def _patch_clients(monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: str) -> None:
    """Point every client constant that was read at import time to `endpoint`, online, with `hf_home` as cache."""
    from pathlib import Path
    from urllib.parse import urlsplit

    import datasets.config
    import diffusers.loaders.lora_base
    import diffusers.utils.constants
    import diffusers.utils.hub_utils
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.hf_api

    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": hf_home,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": FAKE_TOKEN,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)

    hub_cache = os.path.join(hf_home, "hub")
    for name, value in {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(hf_constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname}),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": hub_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": os.path.join(hf_home, "assets"),
        "HF_XET_CACHE": os.path.join(hf_home, "xet"),
        "HF_TOKEN_PATH": os.path.join(hf_home, "token"),
        "HF_STORED_TOKENS_PATH": os.path.join(hf_home, "stored_tokens"),
    }.items():
        monkeypatch.setattr(hf_constants, name, value, raising=False)
    # `huggingface_hub.model_info`, `snapshot_download`, ... are bound to a module-level `HfApi` built at import.
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)

    datasets_cache = Path(hf_home) / "datasets"
    for name, value in {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "HF_CACHE_HOME": hf_home,
        "HF_DATASETS_CACHE": datasets_cache,
        "HF_MODULES_CACHE": Path(hf_home) / "modules",
        "DOWNLOADED_DATASETS_PATH": datasets_cache / "downloads",
        "EXTRACTED_DATASETS_PATH": datasets_cache / "downloads" / "extracted",
    }.items():
        monkeypatch.setattr(datasets.config, name, value, raising=False)

    monkeypatch.setattr(diffusers.loaders.lora_base, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(diffusers.utils.hub_utils, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(diffusers.utils.constants, "HUGGINGFACE_CO_RESOLVE_ENDPOINT", endpoint)


@pytest.fixture
def hub_token() -> str:
    """The token the fake Hub accepts (also exported as `HF_TOKEN` by `fake_hub`)."""
    return FAKE_TOKEN


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A running `FakeHub` that the real clients talk to; stopped (and the clients restored) after the test."""
    hub = FakeHub(valid_tokens={FAKE_TOKEN})
    endpoint = hub.start()
    hf_home = str(tmp_path / "hf_home")
    os.makedirs(hf_home, exist_ok=True)
    _patch_clients(monkeypatch, endpoint, hf_home)
    try:
        yield hub
    finally:
        hub.stop()
