"""The Trainer every run and benchmark uses: :func:`make_trainer`, with the project's progress bar,
the final validation and a profiler that costs nothing, and Lightning's notes a user cannot act on
left out of the console."""

from __future__ import annotations

import logging
import warnings

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.profilers import PassThroughProfiler
from omegaconf import DictConfig

from maist.callbacks.progress import StepProgressBar
from maist.callbacks.validation import ValidateAtEnd

# Lightning's console notes that say nothing about this run: adverts, defaults MAIST sets on
# purpose, and warnings about its own internals.
QUIET_MESSAGES = ("💡 Tip:", "`weights_only` was not set")
QUIET_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",  # a deprecation inside Lightning
    r"The number of training batches .* is smaller than the logging interval",  # short runs log at the end
    r".*does not have many workers",  # batches are made in-process on purpose (benchmarks.bench_loader)
)


class _DropNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(QUIET_MESSAGES)


# The loggers those notes come from (a filter acts on the records of its own logger only).
NOTE_LOGGERS = (
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.pytorch.trainer.connectors.checkpoint_connector",
)


def quiet_lightning() -> None:
    """Leave Lightning's notes that a user cannot act on out of the console (idempotent)."""
    for name in NOTE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotes) for f in logger.filters):
            logger.addFilter(_DropNotes())
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


class _NoContext:
    __slots__ = ()

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class QuietProfiler(PassThroughProfiler):
    """Lightning's default profiler, minus its cost: ``profile()`` returns one shared no-op context
    where the default enters a fresh generator-based context manager, ~35 times a training step."""

    _context = _NoContext()

    def profile(self, action_name: str):
        return self._context


def make_trainer(cfg: DictConfig, **kwargs) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` (``kwargs`` override its keys). It validates at the end of every
    run that has a validation set (:class:`~maist.callbacks.validation.ValidateAtEnd`); without a
    configured ``trainer.profiler`` it has :class:`QuietProfiler`; with the progress bar on and none
    among the callbacks, a :class:`~maist.callbacks.progress.StepProgressBar`."""
    quiet_lightning()
    if cfg.trainer.get("profiler") is None:
        kwargs.setdefault("profiler", QuietProfiler())
    callbacks = list(kwargs.get("callbacks") or [])
    if not any(isinstance(c, ValidateAtEnd) for c in callbacks):
        callbacks.append(ValidateAtEnd())
    if kwargs.get("enable_progress_bar", cfg.trainer.get("enable_progress_bar", True)) and not any(
        isinstance(c, ProgressBar) for c in callbacks
    ):
        callbacks.append(StepProgressBar())
    kwargs["callbacks"] = callbacks
    return instantiate(cfg.trainer, **kwargs)
