"""Checkpoints and output folders: the one definition of checkpoint names, atomic saves, pruning, resolution.

A run folder holds `checkpoints/checkpoint_<epoch>/`, each a complete `accelerate` state (the model in diffusers
format, optimizer, RNG) plus `trainer_state.json` (`epoch`, `global_step`, the config). A checkpoint is written to
`checkpoint_<epoch>.tmp` and renamed when complete, so an interrupted save never replaces a loadable one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint_"
TMP_SUFFIX = ".tmp"


def checkpoint_path(folder: str, epoch: int) -> str:
    """`<folder>/checkpoint_<epoch>`."""
    return os.path.join(folder, f"{CHECKPOINT_PREFIX}{epoch}")


def checkpoint_epoch(name: str) -> int | None:
    """The epoch of a checkpoint folder name (`checkpoint_<epoch>`), or None for any other name."""
    suffix = name[len(CHECKPOINT_PREFIX):] if name.startswith(CHECKPOINT_PREFIX) else ""
    return int(suffix) if suffix.isdigit() else None


def list_checkpoints(folder: str) -> list[tuple[int, str]]:
    """Complete checkpoints (`checkpoint_<epoch>` holding trainer_state.json) in `folder`, oldest first."""
    if not os.path.isdir(folder):
        return []
    out = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        epoch = checkpoint_epoch(name)
        if epoch is not None and os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            out.append((epoch, path))
    return sorted(out)


def save_checkpoint(accelerator, folder: str, epoch: int, state: dict, keep: int | None = None) -> str:
    """Save `accelerator`'s state and `state` (written as trainer_state.json) as `<folder>/checkpoint_<epoch>`,
    atomically, then keep only the `keep` newest complete checkpoints (all when None). Every process calls it; the
    main process writes the trainer state, renames and prunes. Returns the path."""
    final = checkpoint_path(folder, epoch)
    tmp = final + TMP_SUFFIX
    if accelerator.is_main_process:
        os.makedirs(folder, exist_ok=True)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(output_dir=tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(tmp, TRAINER_STATE_NAME), "w") as f:
            json.dump(state, f, indent=2, default=str)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep is not None:
            prune_checkpoints(folder, keep)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(folder: str, keep: int) -> None:
    """Delete all but the `keep` newest complete checkpoints in `folder`, and any leftover `.tmp` folder."""
    complete = list_checkpoints(folder)
    for _, path in complete[: max(0, len(complete) - keep)]:
        shutil.rmtree(path, ignore_errors=True)
    for name in os.listdir(folder):
        if name.endswith(TMP_SUFFIX):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def read_trainer_state(path: str) -> dict:
    """The trainer_state.json of the checkpoint folder `path`."""
    with open(os.path.join(path, TRAINER_STATE_NAME)) as f:
        return json.load(f)


def resolve_checkpoint(resume_from: str, token: str | None = None) -> str:
    """A complete checkpoint folder from `resume_from`: a checkpoint folder, a run folder (its latest complete
    checkpoint), or a Hub repo id (downloaded)."""
    path = os.path.normpath(os.path.expanduser(resume_from))
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            return path
        for folder in (os.path.join(path, "checkpoints"), path):
            found = list_checkpoints(folder)
            if found:
                return found[-1][1]
        raise ValueError(
            f"resume_from={resume_from!r}: no complete checkpoint (a checkpoint_<epoch> folder with "
            f"{TRAINER_STATE_NAME}) found there"
        )
    if os.path.exists(path):
        raise ValueError(f"resume_from={resume_from!r} is a file; pass a checkpoint folder, a run folder or a repo id")
    parts = resume_from.split("/")
    if len(parts) == 2 and all(parts):
        from .hub import download_checkpoint

        return download_checkpoint(resume_from, token=token)
    raise ValueError(f"resume_from={resume_from!r} is neither an existing folder nor a Hub repo id (namespace/name)")


def check_writable_folder(path: str, field: str, create: bool = False) -> None:
    """Raise a one-line `ValueError` naming `field` unless `path` is a folder that can be written, or can be created.

    With `create=False` nothing is left behind: a folder that does not exist yet is not created, and a temporary file
    probes its nearest existing parent. With `create=True` the folder is created (a run's own project folder).
    """
    full = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.exists(full) and not os.path.isdir(full):
        raise ValueError(f"{field}={path!r} is a file, not a folder; set {field} to a folder to write to")
    if create:
        try:
            os.makedirs(full, exist_ok=True)
        except OSError as err:
            raise ValueError(
                f"cannot write to the output folder {full} ({err.strerror}); set {field} to a writable folder"
            ) from err
    parent = full
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{field}={path!r} cannot be created: {parent} is a file; set {field} to a writable folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ValueError(
            f"cannot write to the output folder {full} for {field} ({err.strerror} in {parent}); set {field} to a "
            "writable folder"
        ) from err


class CheckpointingMixin:
    """Checkpoints of a trainer with `config`, `accelerator`, `sd_pipeline` and `checkpoint_dir`: the accelerate
    save/load hooks (the model in its family's format), atomic saves after epochs, resuming."""

    def _save_model_hook(self, models, weights, output_dir):
        unwrapped = [self.accelerator.unwrap_model(m) for m in models]
        if self.accelerator.is_main_process:
            self.sd_pipeline.save_checkpoint(unwrapped, weights, output_dir)
        else:
            weights.clear()

    def _load_model_hook(self, models, input_dir):
        unwrapped = [self.accelerator.unwrap_model(m) for m in models]
        self.sd_pipeline.load_checkpoint(unwrapped, input_dir)
        models.clear()

    def save_checkpoint(self, epoch: int, global_step: int) -> str:
        """Save the training state after `epoch` atomically (see `checkpointing.save_checkpoint`); keeps the
        `num_checkpoint_limit` newest. A save interrupted part-way leaves the previous checkpoint loadable."""
        state = {"epoch": epoch, "global_step": global_step, "config": self.config.to_dict()}
        path = save_checkpoint(self.accelerator, self.checkpoint_dir, epoch, state,
                               keep=self.config.num_checkpoint_limit)
        self._after_checkpoint(path, epoch)
        return path

    def _after_checkpoint(self, path: str, epoch: int):
        """Hook: after each checkpoint (Hub publishing)."""
        if self.config.push_to_hub and self.config.hub_strategy in ("every_save", "checkpoint"):
            self._push_checkpoint(path, epoch)

    def _resume(self, resume_from: str):
        path = resolve_checkpoint(resume_from, token=self.config.hub_token)
        logger.info("resuming from %s", path)
        self.accelerator.load_state(path)
        state = read_trainer_state(path)
        self.first_epoch = int(state["epoch"]) + 1
        self.global_step = int(state["global_step"])
        self.resumed_from = path
