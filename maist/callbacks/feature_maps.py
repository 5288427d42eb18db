"""The article's figures during training: first-layer filters and the feature maps of a few
fixed characters, at step 0 (before any update), every ``every_n_steps`` steps, and at the end.

Each drawing goes to every TensorBoard logger (``features/<char>/<map>``, ``filters/conv1``,
``weights/fc`` for the linear model) and to PNG files::

    <dirpath>/step000000/filters.png
    <dirpath>/step000000/あ_input.png, あ_conv1.png, あ_relu1.png, あ_pool1.png, ... あ_pool2.png
    <dirpath>/step010000/...

so the figures of one moment sit in one folder and a step's folder sorts by step.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import lightning as L
import torch

from maist import checks, tracking
from maist.viz import feature_figures, save_png

log = logging.getLogger(__name__)

DEFAULT_CHARS = ("あ", "ぬ", "ね", "ば", "ぱ")
SPLITS = ("train", "val", "test")
# Figures that belong to the network, not to one input: logged once per step under these tags.
NET_FIGURES = {"filters": "filters/conv1", "weights": "weights/fc"}


class FeatureMapFigures(L.Callback):
    """Draws the first-layer filters and the feature maps of a few characters (rank zero only).

    Args:
        chars: the characters whose maps are drawn, each from its first example in ``split``; those
            the data lacks are skipped (none present: the first five classes instead).
        every_n_steps: also draw every this many steps (``None``: at step 0 and at the end only).
        dirpath: the folder of the PNGs (default: ``figures/`` in the trainer's root folder).
        split: the part of the data the examples come from (``val``, ``train`` or ``test``).
    """

    def __init__(
        self, chars=DEFAULT_CHARS, every_n_steps: int | None = None, dirpath: str | None = None, split: str = "val"
    ):
        self.chars = tuple(str(c) for c in chars or ())
        self.every_n_steps = checks.optional_whole("callbacks.feature_maps.every_n_steps", every_n_steps, 1)
        self.dirpath = dirpath
        self.split = checks.choice("callbacks.feature_maps.split", split, SPLITS)
        self.samples: list[tuple[str, torch.Tensor]] | None = None  # (name, image (1, 1, S, S)), on CPU
        self._drawn: set[int] = set()
        self._announced = False

    # ------------------------------------------------------------------ samples
    def _pick_samples(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[tuple[str, torch.Tensor]]:
        """The first example of each wanted character in the split; chars the data lacks are
        skipped; if none is there, the first example of the first five classes present."""
        dm = getattr(trainer, "datamodule", None)
        part = getattr(dm, f"{self.split}_set", None) if dm is not None else None
        if part is None or not hasattr(part, "targets") or len(part.targets) == 0:
            log.warning("feature maps: no %s_set on the datamodule; drawing the filters only", self.split)
            return []
        classes = list(getattr(dm, "classes", None) or getattr(pl_module, "classes", None) or [])
        targets = torch.as_tensor(part.targets).reshape(-1)

        def first(label: int) -> torch.Tensor | None:
            hit = torch.nonzero(targets == label)
            if len(hit) == 0:
                return None
            if callable(getattr(part, "float_images", None)):  # a Part: one image made float
                return part.float_images([int(hit[0, 0])])[0]
            return part.data[int(hit[0, 0])]

        def name(label: int) -> str:
            return classes[label] if label < len(classes) else str(label)

        samples, missing = [], []
        for ch in self.chars:
            img = first(classes.index(ch)) if ch in classes else None
            if img is None:
                missing.append(ch)
            else:
                samples.append((ch, img))
        if missing:
            log.info("feature maps: %s not in the %s data, skipped", " ".join(missing), self.split)
        if not samples:
            labels = [int(v) for v in torch.unique(targets)[:5]]  # sorted: the kana-table order
            samples = [(name(lab), first(lab)) for lab in labels]
            log.info("feature maps: drawing %s instead", " ".join(n for n, _ in samples))
        return [(n, img.detach().to("cpu", torch.float32).reshape(1, 1, *img.shape[-2:]).clone()) for n, img in samples]

    # ------------------------------------------------------------------ drawing
    def _dir(self, trainer: L.Trainer) -> Path:
        root = self.dirpath or os.path.join(trainer.default_root_dir or trainer.log_dir or ".", "figures")
        return Path(root)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw, log and save every figure for the current global step (once per step)."""
        step = int(trainer.global_step)
        if step in self._drawn or not trainer.is_global_zero:
            return
        self._drawn.add(step)
        if self.samples is None:
            self.samples = self._pick_samples(trainer, pl_module)
        net = getattr(pl_module, "net", pl_module)
        modes = {m: m.training for m in net.modules()}
        threads = torch.get_num_threads()
        net.eval()
        try:
            # One image at a time is too little work to share: on a busy CPU, idle OpenMP threads
            # make it ~20× slower (on a GPU this does nothing).
            torch.set_num_threads(1)
            figures = {n: feature_figures(net, img) for n, img in self.samples}
            if not figures:  # no samples: draw the network's own figures from a blank image
                fc = getattr(net, "fc", None)
                side = math.isqrt(fc.in_features) if isinstance(fc, torch.nn.Linear) else 28
                figures = {"": feature_figures(net, torch.zeros(1, 1, side, side))}
        finally:
            torch.set_num_threads(threads)
            for m, mode in modes.items():
                m.train(mode)

        images: dict[str, tuple] = {}  # tag → (array, file name)
        for n, figs in figures.items():
            for fig, arr in figs.items():
                if fig in NET_FIGURES:
                    images[NET_FIGURES[fig]] = (arr, f"{fig}.png")
                elif n:
                    images[f"features/{n}/{fig}"] = (arr, f"{n}_{fig}.png")

        folder = self._dir(trainer) / f"step{step:06d}"
        for tag, (arr, fname) in images.items():
            tracking.log_image(trainer.loggers, tag, arr, step)
            save_png(arr, folder / fname, compress_level=1)
        tracking.flush(trainer.loggers)
        if not self._announced:
            self._announced = True
            log.info("feature maps: figures of %s written to %s", ", ".join(figures) or "the filters", folder.parent)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer, pl_module):
        self.draw(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.every_n_steps and trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self.draw(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.draw(trainer, pl_module)
