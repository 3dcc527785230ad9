"""Failure semantics and training-time publishing against the fake Hub: clear errors after local files are written,
no token anywhere, CheckpointPusher warns and retries, checkpoints download for `resume_from=<repo id>`."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest

from conftest_hub import FAKE_TOKEN, fake_hub, hub_token  # noqa: F401
from trl_safediffusion.hub import (
    CheckpointPusher,
    HubDownloadError,
    HubPushError,
    download_checkpoint,
    is_local_or_repo_id,
    push_folder_to_hub,
    scrub_tokens,
)

REPO = "tester/run"
BAD_TOKEN = "hf_thisTokenIsWrong987654321zyx"


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _model_dir(root, tag: bytes = b"v1") -> str:
    folder = str(root / "hub_model")
    _write(os.path.join(folder, "pytorch_lora_weights.safetensors"), b"lora-" + tag)
    _write(os.path.join(folder, "README.md"), b"---\nlibrary_name: diffusers\n---\n# card\n")
    return folder


def _checkpoint_dir(root, epoch: int) -> str:
    """A folder shaped like the trainer's accelerate checkpoint."""
    folder = str(root / "checkpoints" / f"checkpoint_{epoch}")
    _write(os.path.join(folder, "model.safetensors"), f"weights-{epoch}".encode())
    _write(os.path.join(folder, "optimizer.bin"), f"optimizer-{epoch}".encode())
    _write(os.path.join(folder, "random_states_0.pkl"), f"rng-{epoch}".encode())
    _write(os.path.join(folder, "trainer_state.json"), json.dumps({"epoch": epoch, "global_step": 10 * epoch}).encode())
    return folder


def _digest(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


@pytest.mark.parametrize("failure", ["http_500", "server_down"])
def test_push_failure_is_one_clear_error_and_keeps_the_folder(fake_hub, tmp_path, failure):  # noqa: F811
    folder = _model_dir(tmp_path)
    before = _digest(folder)
    if failure == "http_500":
        fake_hub.fail_status = 500
    else:
        fake_hub.stop()
    with pytest.raises(HubPushError) as info:
        push_folder_to_hub(folder, REPO, token=FAKE_TOKEN)
    message = str(info.value)
    assert info.value.repo_id == REPO and REPO in message
    assert ("HTTP 500" in message) if failure == "http_500" else ("could not be reached" in message)
    assert folder in message
    assert FAKE_TOKEN not in message
    assert _digest(folder) == before


def test_bad_token_error_names_the_cause_without_the_token(fake_hub, tmp_path, caplog):  # noqa: F811
    folder = _model_dir(tmp_path)
    with caplog.at_level(logging.DEBUG), pytest.raises(HubPushError) as info:
        push_folder_to_hub(folder, REPO, token=BAD_TOKEN)
    message = str(info.value)
    assert "HTTP 401" in message and "token" in message and REPO in message
    assert BAD_TOKEN not in message
    assert BAD_TOKEN not in caplog.text
    assert REPO not in {repo_id for _, repo_id in fake_hub.repos}


def test_checkpoint_pusher_warns_then_retries_at_the_next_save(fake_hub, tmp_path, caplog):  # noqa: F811
    pusher = CheckpointPusher(REPO, strategy="checkpoint", token=FAKE_TOKEN, checkpoint_limit=1)
    model = _model_dir(tmp_path)
    first = _checkpoint_dir(tmp_path, 1)
    before = _digest(first)

    fake_hub.fail_status = 500
    with caplog.at_level(logging.WARNING, logger="trl_safediffusion.hub"):
        assert pusher.on_save(model, checkpoint_dir=first, epoch=1) is False
    assert pusher.pending
    assert "tester/run" in caplog.text and "retried at the next save" in caplog.text
    assert FAKE_TOKEN not in caplog.text and FAKE_TOKEN not in repr(pusher)
    assert _digest(first) == before

    fake_hub.fail_status = None
    second = _checkpoint_dir(tmp_path, 2)
    assert pusher.on_save(_model_dir(tmp_path, b"v2"), checkpoint_dir=second) is True  # epoch from the folder name
    assert not pusher.pending
    repo = fake_hub.repo(REPO)
    files = repo.files()
    assert files["pytorch_lora_weights.safetensors"] == b"lora-v2"
    assert files["checkpoints/checkpoint_2/optimizer.bin"] == b"optimizer-2"
    assert "retrying" in repo.commit_messages[repo.branches["main"]]

    third = _checkpoint_dir(tmp_path, 3)
    assert pusher.on_save(model, checkpoint_dir=third, epoch=3) is True
    files = fake_hub.repo(REPO).files()
    assert not any(p.startswith("checkpoints/checkpoint_2/") for p in files)  # checkpoint_limit=1
    assert "checkpoints/checkpoint_3/trainer_state.json" in files

    fake_hub.stop()  # a dead server never raises out of on_save
    assert pusher.on_save(model, checkpoint_dir=_checkpoint_dir(tmp_path, 4), epoch=4) is False


def test_checkpoint_pusher_strategies_and_main_process(fake_hub, tmp_path):  # noqa: F811
    model = _model_dir(tmp_path)
    ckpt = _checkpoint_dir(tmp_path, 1)
    assert CheckpointPusher(REPO, strategy="end", token=FAKE_TOKEN).on_save(model, ckpt, epoch=1) is False
    assert CheckpointPusher(REPO, strategy="checkpoint", is_main_process=False).on_save(model, ckpt, epoch=1) is False
    assert fake_hub.requests == []
    assert CheckpointPusher(REPO, strategy="every_save", token=FAKE_TOKEN).on_save(model, ckpt, epoch=1) is True
    assert not any(p.startswith("checkpoints/") for p in fake_hub.repo(REPO).files())  # model only
    with pytest.raises(ValueError, match="strategy must be one of"):
        CheckpointPusher(REPO, strategy="always")


def test_download_checkpoint_returns_the_latest_complete_checkpoint(fake_hub, tmp_path):  # noqa: F811
    pusher = CheckpointPusher(REPO, strategy="checkpoint", token=FAKE_TOKEN)
    model = _model_dir(tmp_path)
    for epoch in (1, 2):
        assert pusher.on_save(model, _checkpoint_dir(tmp_path, epoch), epoch=epoch)
    path = download_checkpoint(REPO, local_dir=str(tmp_path / "download"))
    assert path.replace(os.sep, "/").endswith("checkpoints/checkpoint_2")
    assert _digest(path) == _digest(str(tmp_path / "checkpoints" / "checkpoint_2"))
    assert not os.path.exists(str(tmp_path / "download" / "checkpoints" / "checkpoint_1"))
    assert download_checkpoint(REPO, epoch=1).replace(os.sep, "/").endswith("checkpoints/checkpoint_1")

    push_folder_to_hub(model, "tester/no-checkpoints")
    with pytest.raises(FileNotFoundError, match="hub_strategy='checkpoint'"):
        download_checkpoint("tester/no-checkpoints")
    fake_hub.fail_status = 403  # (a dead server gives the same error after huggingface_hub's ~20 s of retries)
    with pytest.raises(HubDownloadError, match="'tester/run'.*HTTP 403"):
        download_checkpoint(REPO)


def test_local_path_or_repo_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("runs/exp")
    assert is_local_or_repo_id("runs/exp") == "local"  # an existing path wins over the repo-id shape
    assert is_local_or_repo_id("tester/run") == "repo"
    for bad in ("not-a-repo", "a/b/c", "../x", "a/"):
        with pytest.raises(ValueError, match="neither an existing local path nor a Hub repo id"):
            is_local_or_repo_id(bad)


def test_scrub_tokens():
    config = {"hub_token": "hf_secretSecret12345", "lr": 1e-5, "tracker_kwargs": {"token": "x", "project": "p"},
              "note": "pushed with hf_anotherSecret999999", "pad_token": "<pad>", "runs": [{"hf_token": "t"}]}
    assert scrub_tokens(config) == {"lr": 1e-5, "tracker_kwargs": {"project": "p"}, "note": "pushed with <redacted>",
                                    "pad_token": "<pad>", "runs": [{}]}


def test_push_to_a_branch_and_to_the_token_users_namespace(fake_hub, tmp_path):  # noqa: F811
    folder = _model_dir(tmp_path)
    url = push_folder_to_hub(folder, "bare-name", revision="dev", commit_message="to dev")
    repo = fake_hub.repo("tester/bare-name")  # a bare name goes under the token's user, as on the Hub
    assert "tester/bare-name" in url
    assert "pytorch_lora_weights.safetensors" in repo.files("dev")
    assert "pytorch_lora_weights.safetensors" not in repo.files("main")
