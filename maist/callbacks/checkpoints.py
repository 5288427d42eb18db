"""Checkpoints that are never half-written, and a ``last.ckpt`` that always holds the latest weights.

- :class:`AtomicCheckpointIO` (a trainer plugin) writes every checkpoint to a temporary file in
  the same folder and renames it into place: a run killed while saving leaves the previous
  checkpoint intact, never a truncated one.
- :class:`LastCheckpoint` saves ``last.ckpt`` after every validation (so a killed run loses at
  most one validation interval) and when training ends (so it holds the final weights of every
  run, whether or not ``val/acc`` improved: ``best.ckpt`` is Lightning's ``ModelCheckpoint``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem

from maist import checks
from maist.files import TEMPORARY_SUFFIX, atomic_path

log = logging.getLogger(__name__)


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files that a write killed half-way left in a run folder and its
    ``checkpoints/`` (``.last.ckpt.*.tmp`` of :func:`~maist.files.atomic_path`): called when a run
    starts in that folder (a resumed or requeued job), before anything writes there."""
    gone = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        for stale in folder.glob(f".*{TEMPORARY_SUFFIX}"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                gone.append(stale)
    if gone:
        log.info("deleted %d temporary file(s) left by an interrupted write: %s", len(gone), ", ".join(map(str, gone)))
    return gone


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, then a rename onto it."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        protocol = get_filesystem(str(path)).protocol
        if "file" not in (protocol if isinstance(protocol, tuple) else (protocol,)):  # remote: as Lightning does
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class LastCheckpoint(L.Callback):
    """Writes ``dirpath/filename`` after every validation during fitting, every ``every_n_steps``
    training steps if set, and at the end of fit.

    Args:
        dirpath: the run's checkpoint folder.
        filename: the file's name.
        every_n_steps: also save at every multiple of this global step (``None``: only after
            validations and at the end); for runs without validation, which would otherwise lose
            everything when killed.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt", every_n_steps: int | None = None):
        self.every_n_steps = checks.optional_whole("callbacks.last_checkpoint.every_n_steps", every_n_steps, 1)
        self.path = Path(dirpath) / filename
        self._saved_step: int | None = None

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or self._saved_step == trainer.global_step:
            return
        trainer.save_checkpoint(self.path)  # the full training state, for resuming; every rank calls it
        self._saved_step = trainer.global_step

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)
