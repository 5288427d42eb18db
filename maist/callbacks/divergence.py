"""Stop a run that diverges: a non-finite loss, or validation accuracy collapsing.

The module skips the optimizer step of a non-finite loss, so the weights stay finite; this
callback then stops training with a clear message: after that step, or, where the module decides
on the device (a fused optimizer, the default on a GPU), at the next step that logs (at the end
of training where none does: ``log_every_n_steps`` beyond ``max_steps``).
``best.ckpt`` (kept by ModelCheckpoint on ``val/acc``) remains the model to use; ``reason`` says
what happened (train.py records it).
"""

from __future__ import annotations

import logging

import lightning as L

from maist import checks

log = logging.getLogger(__name__)


class DivergenceGuard(L.Callback):
    """Stops training on a non-finite loss or a collapse of validation accuracy.

    Args:
        collapse_fraction: stop when ``monitor`` falls below this fraction of its best …
        min_best: … once the best is at least this.
        monitor: the validation metric to watch.
    """

    def __init__(self, collapse_fraction: float = 0.5, min_best: float = 0.2, monitor: str = "val/acc"):
        name = "callbacks.divergence_guard."
        self.collapse_fraction = checks.fraction(name + "collapse_fraction", collapse_fraction)
        self.min_best = checks.fraction(name + "min_best", min_best, high_open=False)
        self.monitor = monitor
        self.best = 0.0
        self.reason: str | None = None

    def _stop(self, trainer: L.Trainer, reason: str) -> None:
        self.reason = reason
        trainer.should_stop = True
        log.error(
            "divergence guard: %s. Training stops; use checkpoints/best.ckpt "
            "(lower the learning rate or use schedule=stepped).",
            reason,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Where the module decides on the device (a fused optimizer), reading its decision waits for
        # the device: it is read on the steps that log (and so wait) anyway, and at the end.
        if not getattr(pl_module, "nonfinite_on_device", False) or pl_module._logging_step():
            self._check_nonfinite(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._check_nonfinite(trainer, pl_module)

    def _check_nonfinite(self, trainer, pl_module) -> None:
        step = getattr(pl_module, "nonfinite_step", None)
        if step is not None and self.reason is None:
            self._stop(trainer, f"the training loss was not finite at step {step}")

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        acc = float(trainer.callback_metrics[self.monitor])
        self.best = max(self.best, acc)
        if self.best >= self.min_best and acc < self.collapse_fraction * self.best and self.reason is None:
            self._stop(
                trainer, f"{self.monitor} collapsed to {acc:.4f} at step {trainer.global_step} (best {self.best:.4f})"
            )

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state_dict):
        self.best = state_dict.get("best", 0.0)
