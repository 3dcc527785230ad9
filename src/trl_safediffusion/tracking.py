"""Run tracking of a trainer: the Accelerator with its project folder and trackers, the log history, the one-line
epoch summary, the interrupt message."""

from __future__ import annotations

import logging
import os

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from .checkpointing import check_writable_folder, list_checkpoints
from .reward_stats import epoch_summary

logger = logging.getLogger(__name__)


class TrackingMixin:
    """The run of a trainer with `config` and `log_history`: sets `accelerator`, `project_dir`, `checkpoint_dir` and
    `inference_dtype`."""

    def _setup_accelerator(self):
        config = self.config
        project_kwargs = dict(config.project_kwargs)
        project_dir = project_kwargs.pop("project_dir", None) or os.path.join(
            config.logdir, config.run_name or config.exp_name
        )
        project_kwargs.pop("automatic_checkpoint_naming", None)  # we name checkpoints by epoch ourselves
        project_kwargs.pop("total_limit", None)
        self.project_dir = os.path.abspath(project_dir)
        self.checkpoint_dir = os.path.join(self.project_dir, "checkpoints")
        accelerator_kwargs = dict(config.accelerator_kwargs)
        if "cpu" not in accelerator_kwargs and cpu_only_multiprocess():
            # accelerate runs torchrun-launched CPU ranks as independent single processes unless told cpu=True
            accelerator_kwargs["cpu"] = True
        self.accelerator = Accelerator(
            log_with=config.log_with,
            mixed_precision=config.mixed_precision,
            project_config=ProjectConfiguration(project_dir=self.project_dir, **project_kwargs),
            **accelerator_kwargs,
        )
        if self.accelerator.is_main_process:
            # every folder the run writes is checked before the first epoch, so that no run ends with nowhere to save
            check_writable_folder(self.checkpoint_dir, "logdir (or project_kwargs['project_dir'])", create=True)
            if config.output_dir:
                check_writable_folder(config.output_dir, "output_dir")
            if config.project_kwargs.get("logging_dir"):
                check_writable_folder(config.project_kwargs["logging_dir"], "project_kwargs['logging_dir']")
        if self.accelerator.is_main_process and config.log_with is not None:
            self.accelerator.init_trackers(
                config.tracker_project_name, config=self._tracker_config(), init_kwargs=config.tracker_kwargs
            )
        logger.info("config: %s", config.to_dict())
        set_seed(config.seed, device_specific=True)
        precision = self.accelerator.mixed_precision
        self.inference_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)

    def _tracker_config(self) -> dict:
        out = {}
        for k, v in self.config.to_dict().items():
            out[k] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
        return out

    def _log(self, values: dict, step: int):
        record = {"step": step, **values}
        self.log_history.append(record)
        self.accelerator.log(values, step=step)
        logger.info("step %d: %s", step, {k: (round(v, 5) if isinstance(v, float) else v) for k, v in values.items()})

    def _epoch_summary(self, epoch: int, epochs: int) -> str:
        """One line on `epoch` from its logs: reward mean and std (by label where logged), the mean loss terms."""
        records = [r for r in self.log_history if r.get("epoch") == epoch]
        names = list(dict.fromkeys(k[len("train/"):] for r in records for k in r if k.startswith("train/")))
        line = epoch_summary(records, epoch, epochs, names)
        logger.info("%s", line)
        return line

    def _interrupt_message(self, epoch: int) -> str:
        """What an interrupted run leaves behind and how to continue it, in one line."""
        found = list_checkpoints(self.checkpoint_dir)
        if not found:
            return (f"training interrupted during epoch {epoch}: no checkpoint saved (save_freq="
                    f"{self.config.save_freq}), nothing to resume from")
        last_epoch, path = found[-1]
        return (f"training interrupted during epoch {epoch}: saved the checkpoint after epoch {last_epoch}; continue "
                f"with --resume_from {path} (config resume_from in Python)")

    def _flush_trackers(self):
        """Write out what the trackers buffer but keep them open: `train()` may be called again (a guidance curriculum
        does), and a finished W&B run refuses to log."""
        for tracker in self.accelerator.trackers:
            flush = getattr(getattr(tracker, "writer", None), "flush", None)  # TensorBoard's SummaryWriter
            if callable(flush):
                flush()

    def end_training(self):
        """Close the trackers (finish the W&B run, close the TensorBoard writer) after the last `train()`.

        Optional: W&B finishes its run when the process exits, and `train()` already flushes TensorBoard. The process
        group stays up (unlike accelerate's `end_training`), so `save_pretrained` / `push_to_hub` may still follow.
        Calling it twice is harmless.
        """
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers = []


def cpu_only_multiprocess() -> bool:
    """True when launched as several processes (torchrun, accelerate, MPI) on a machine without a GPU/XPU."""
    world = max(int(os.environ.get(k, "1") or 1) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return world > 1 and not torch.cuda.is_available() and not has_xpu
