"""Validation at the end of training: every run that has a validation set ends validated, so it has
a ``best.ckpt`` and a ``val/acc_best`` however its ``max_steps`` and ``val_check_interval`` fall
(a 300-step run with validation every 1,000 steps, a sweep of short runs)."""

from __future__ import annotations

import lightning as L


class ValidateAtEnd(L.Callback):
    """At the last training step, asks Lightning to stop there (``trainer.should_stop``), which makes
    its loop validate after that step unless it validates there anyway; nothing else changes."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
