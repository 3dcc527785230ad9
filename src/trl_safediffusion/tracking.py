"""Run tracking of a trainer: the log history and trackers, the one-line epoch summary, the interrupt message."""

from __future__ import annotations

import logging

from .checkpointing import list_checkpoints
from .reward_stats import epoch_summary

logger = logging.getLogger(__name__)


class TrackingMixin:
    """Logging for a trainer with `config`, `accelerator`, `log_history` and `checkpoint_dir`."""

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
