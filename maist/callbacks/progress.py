"""Lightning's progress bar, counting the run's steps: ``step / max_steps`` with the rate and the time
left, across epochs (MAIST's schedules and runs are counted in steps; an epoch of sampled batches
means little), redrawn every ``refresh_rate`` steps."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf


class StepProgressBar(TQDMProgressBar):
    """A :class:`~lightning.pytorch.callbacks.TQDMProgressBar` whose training bar is one bar for the
    whole run, at the global step (a resumed run starts where it stopped).

    Args:
        refresh_rate: redraw every this many steps (between redraws a step costs one modulo).
        **kwargs: passed to Lightning's ``TQDMProgressBar`` (``leave``, ``process_position``).
    """

    def __init__(self, refresh_rate: int = 10, **kwargs):
        super().__init__(refresh_rate=refresh_rate, **kwargs)

    @property
    def train_description(self) -> str:
        return "train"

    def on_train_start(self, trainer, pl_module) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.total = convert_inf(trainer.max_steps if trainer.max_steps > 0 else None)
        self.train_progress_bar.initial = self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.unit = "step"

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # one bar for the run, not one per epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar, step = self.train_progress_bar, trainer.global_step
        if self._should_update(step, bar.total) and not bar.disable:
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass
