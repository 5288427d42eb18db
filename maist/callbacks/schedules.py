"""Step schedules: a table (global step → value) and one callback that applies it.

The value for step ``s`` is the table's entry with the largest key ≤ ``s``; it is applied
before step ``s`` runs (``s`` counts optimizer steps from 0, like the article's loop index),
so a run resumed from a checkpoint at step ``s`` picks up the right value at once.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Mapping

import lightning as L

from maist import checks
from maist.errors import ConfigError

log = logging.getLogger(__name__)

# The parameters a schedule may set, and the range (low, high] of their values.
PARAMS = {"lr": (0.0, math.inf), "keep_prob": (0.0, 1.0)}


def _step(name: str, key) -> int:
    """A table's key as a global step: a whole number ≥ 0 (or a string of digits, as YAML may give
    it); ``0.5`` or ``true`` is refused, never rounded to another step."""
    if isinstance(key, str) and key.isdecimal():
        key = int(key)
    return checks.whole(f"{name} step", key, 0, why=" (a global step)")


def _value(name: str, step, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: {value!r} at step {step} must be a number")
    return float(value)


class StepTable:
    """A piecewise-constant function of the global step."""

    def __init__(self, values: Mapping[int, float], name: str = "schedule"):
        if not isinstance(values, Mapping) or not values:
            raise ConfigError(f"{name}: a step schedule needs at least one (step: value) entry")
        items = sorted((_step(name, k), _value(name, k, v)) for k, v in values.items())
        if items[0][0] != 0:
            raise ConfigError(f"{name}: a step schedule must start at step 0, its first step is {items[0][0]}")
        self.steps = [s for s, _ in items]
        self.values = [v for _, v in items]

    def __call__(self, step: int) -> float:
        return self.values[bisect.bisect_right(self.steps, step) - 1]

    def __repr__(self) -> str:
        return f"StepTable({dict(zip(self.steps, self.values))})"


class StepSchedule(L.Callback):
    """Sets the optimizer's learning rate (``param: lr``) or the network's dropout keep
    probability (``param: keep_prob``) from a step table before every training step.

    Args:
        param: ``lr`` or ``keep_prob``.
        values: global step → value; the first key must be 0. Rates must be finite and > 0,
            keep probabilities in (0, 1].
    """

    def __init__(self, param: str, values: Mapping[int, float]):
        self.param = checks.choice("schedule param", param, PARAMS)
        self.table = StepTable(values, name=f"schedule {param}")
        low, high = PARAMS[param]
        for step, value in zip(self.table.steps, self.table.values):
            if not (math.isfinite(value) and low < value <= high):
                allowed = f"> {low:g}" if math.isinf(high) else f"in ({low:g}, {high:g}]"
                raise ConfigError(f"schedule {param}: {value:g} at step {step} must be a finite number {allowed}")
        self.current: float | None = None

    def apply(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> float:
        value = self.table(step)
        if self.param == "lr":
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = value
        else:
            pl_module.net.keep_prob = value
        return value

    def check_module(self, pl_module: L.LightningModule) -> None:
        """Before any data is decoded: a keep-probability schedule needs a network with dropout's
        ``keep_prob`` (the article's CNN)."""
        if self.param == "keep_prob" and not hasattr(pl_module.net, "keep_prob"):
            raise ConfigError(
                f"schedule keep_prob: {type(pl_module.net).__name__} has no keep_prob to schedule "
                "(use model=cnn, or a schedule of the rate only: schedule=stepped)"
            )

    def on_train_start(self, trainer, pl_module) -> None:
        changes = [step for step in self.table.steps if step > 0]
        if changes and trainer.max_steps > 0 and changes[0] >= trainer.max_steps:
            log.warning(
                "schedule %s: its first change is at step %d, and this run ends at step %d: %s stays %g, the same "
                "as schedule=constant (in a sweep, these runs cannot differ)",
                self.param,
                changes[0],
                trainer.max_steps,
                self.param,
                self.table(0),
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        value = self.apply(trainer, pl_module, step)
        if value != self.current:
            self.current = value
            log.info("step %d: %s = %g", step, self.param, value)
            for logger in trainer.loggers:
                logger.log_metrics({f"schedule/{self.param}": value}, step=step)
