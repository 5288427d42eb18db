"""An exponential moving average of the weights, which is what validation, test and the saved
checkpoints hold.

``callbacks.ema: {_target_: maist.callbacks.ema.WeightAverage, decay: 0.998}`` (an experiment
yaml) keeps, after every optimizer step, ``avg = d · avg + (1 - d) · w`` for every parameter and
floating-point buffer of the module (batch-norm statistics too), with ``d = min(decay,
(1 + t) / (10 + t))`` at step ``t`` so the start is not dominated by the random initialisation.

- Validation and test run on the averaged weights, so ``val/acc``, ``best.ckpt`` and
  ``test/acc`` are the average's.
- Every checkpoint's ``state_dict`` holds the averaged weights: ``maist.predict``, ``export``,
  ``serve`` and ``train=false`` use them with nothing else to know. The raw training weights
  travel in the callback's own state, so resuming (``ckpt_path=…/last.ckpt``) continues from the
  raw weights and the same average, exactly as an uninterrupted run.
- ``start``: the first step that updates the average (before it, the average is a copy).
"""

from __future__ import annotations

import lightning as L
import torch


class WeightAverage(L.Callback):
    def __init__(self, decay: float = 0.998, start: int = 0):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"callbacks.ema.decay must lie in (0, 1), got {decay}")
        self.decay, self.start = float(decay), int(start)
        self.average: dict[str, torch.Tensor] | None = None
        self._raw: dict[str, torch.Tensor] | None = None  # the training weights while the average is in
        self._resume_raw: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ the average
    @staticmethod
    def _tracked(module: L.LightningModule) -> dict[str, torch.Tensor]:
        return {k: v for k, v in module.state_dict().items() if v.dtype.is_floating_point}

    def _init(self, module) -> None:
        self.average = {k: v.detach().clone() for k, v in self._tracked(module).items()}

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.average is None:
            self._init(pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        if self._resume_raw is not None:  # resumed: the module was loaded with the average
            pl_module.load_state_dict(self._resume_raw, strict=False)
            self._resume_raw = None

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps taken so far
        if self.average is None:
            self._init(pl_module)
        current = self._tracked(pl_module)
        if step <= self.start:
            for k, v in current.items():
                self.average[k].copy_(v)
            return
        d = min(self.decay, (1.0 + step - self.start) / (10.0 + step - self.start))
        for k, v in current.items():
            self.average[k].lerp_(v.detach(), 1.0 - d)

    # ------------------------------------------------------------------ swapping in and out
    def _swap_in(self, module) -> None:
        if self.average is None or self._raw is not None:
            return
        self._raw = {k: v.detach().clone() for k, v in self._tracked(module).items()}
        module.load_state_dict(self.average, strict=False)

    def _swap_out(self, module) -> None:
        if self._raw is not None:
            module.load_state_dict(self._raw, strict=False)
            self._raw = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._swap_in(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._swap_out(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        # the module leaves fit with the averaged weights (what the checkpoints and test hold)
        self._swap_in(pl_module)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.average is None:
            return
        raw = self._raw if self._raw is not None else self._tracked(pl_module)
        checkpoint["state_dict"] = {**checkpoint["state_dict"], **{k: v.clone() for k, v in self.average.items()}}
        mine = checkpoint.get("callbacks", {}).get(self.state_key)
        if mine is not None:  # the raw weights, to resume training from
            mine["raw"] = {k: v.detach().clone() for k, v in raw.items()}

    def state_dict(self) -> dict:
        return {"decay": self.decay, "start": self.start, "average": self.average}

    def load_state_dict(self, state_dict: dict) -> None:
        self.average = state_dict.get("average")
        self._resume_raw = state_dict.get("raw")
