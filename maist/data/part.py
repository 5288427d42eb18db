"""One side of a split, as the data module holds it: uint8 images as cached (shared, never
copied), labels and writers; and the dataset that hands a loader whole batches of it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from maist.data.dataset import EtlDataset, to_float
from maist.data.preprocess import INK_LEVEL, ink_box

COPY_CHUNK = 65_536  # images gathered on the host at a time when copying a part to a device


class TensorBatches(Dataset):
    """Indexed by a tensor of positions, returns that whole batch of a :class:`Part` (uint8
    images as stored, and labels): no per-sample collation."""

    def __init__(self, part: Part):
        self.part = part

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, idx: torch.Tensor):
        return self.part.images(idx), self.part.targets[idx.to(self.part.targets.device)]


@dataclass
class Part:
    """One side of a split: its images, labels and writers.

    ``store`` holds uint8 images (M, 1, S, S) as cached, ``round(255 x)`` of the preprocessed
    values x in [0, 1]. For a part of a split it is the whole set's memory-mapped array, shared
    by the parts (and by every process that maps the cache entry), never copied; ``rows`` are
    the store rows that are this part's, in order (None: all of them). Read images through
    :meth:`images` (uint8) or :meth:`float_images` (float in [0, 1], what the networks take),
    by position in the part: an int, a slice, positions (list, array or tensor), or None (all).
    """

    store: torch.Tensor
    targets: torch.Tensor
    writers: torch.Tensor
    rows: torch.Tensor | None = None

    @classmethod
    def of(cls, ds: EtlDataset, idx: np.ndarray | None = None) -> Part:
        if idx is None:
            return cls(ds.images, ds.targets, ds.writers)
        rows = torch.as_tensor(idx, dtype=torch.long)
        return cls(ds.images, ds.targets[rows], ds.writers[rows], rows)

    def __len__(self) -> int:
        return len(self.targets)

    def images(self, idx=None) -> torch.Tensor:
        """uint8 images (k, 1, S, S) at positions ``idx`` of this part (see the class doc)."""
        if isinstance(idx, int):
            idx = [idx]
        if isinstance(idx, (list, np.ndarray)):
            idx = torch.as_tensor(idx, dtype=torch.long)
        rows = idx if self.rows is None else self.rows[slice(None) if idx is None else idx]
        if rows is None:
            return self.store
        if isinstance(rows, torch.Tensor):
            rows = rows.to(self.store.device)
        return self.store[rows]

    def float_images(self, idx=None) -> torch.Tensor:
        """The images at ``idx`` as float32 in [0, 1] (4 bytes a pixel: ask for what you need)."""
        return to_float(self.images(idx))

    @property
    def data(self) -> torch.Tensor:
        """Every image of the part as float (N, 1, S, S): made on each access (small sets)."""
        return self.float_images()

    @property
    def device(self) -> torch.device:
        return self.store.device

    def to(self, device: torch.device | str) -> Part:
        """This part with its own images and labels on ``device`` (a compact copy, gathered
        ``COPY_CHUNK`` images at a time); itself if they are there already."""
        device = torch.device(device)
        if self.rows is None and self.store.device == device and self.targets.device == device:
            return self
        store = torch.empty((len(self), *self.store.shape[1:]), dtype=torch.uint8, device=device)
        for start in range(0, len(self), COPY_CHUNK):
            chunk = slice(start, start + COPY_CHUNK)
            store[chunk] = self.images(chunk).to(device)
        return Part(store, self.targets.to(device), self.writers)

    def ink_ratio(self, sample: int = 20_000, chunk: int = 4096) -> float:
        """Median over images of the ink box's longer side over the frame side: how much of the
        frame a character fills. The box is :func:`~maist.data.preprocess.ink_box`'s, the one
        prediction frames user pictures by (:func:`maist.images.normalize_ink`). Measured on
        ``sample`` images evenly spread over the part (all of a smaller part), ``chunk`` at a
        time; images without ink are left out (1.0 when none has any)."""
        n = len(self)
        if n == 0:
            return 1.0
        positions = torch.linspace(0, n - 1, sample).round().long().unique() if n > sample else torch.arange(n)
        size = self.store.shape[-1]
        sides = []
        for part in positions.split(chunk):
            x = self.float_images(part)[:, 0].cpu()
            top, bottom, left, right = ink_box(x)
            inked = (x > INK_LEVEL).flatten(1).any(1)
            sides.append((torch.maximum(bottom - top, right - left) + 1)[inked].float() / size)
        side = torch.cat(sides)
        return float(side.median()) if len(side) else 1.0

    def describe(self) -> str:
        return (
            f"{len(self):,} images, {len(torch.unique(self.writers))} writers, "
            f"{len(torch.unique(self.targets))} classes"
        )
