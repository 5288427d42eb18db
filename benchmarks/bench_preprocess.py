"""Preprocessing speed on one core: the block path (``Preprocess.stored``) against the per-image
path it replaced, side by side, on generated records (not ETL data).

    python -m benchmarks.bench_preprocess [--records 4096] [--old-records 512] [--repeat 3]

Records are ETL8G/ETL9G-shaped: 127 × 128 levels 0–15, faint noise and ink rectangles
(``benchmarks.bench_decode.random_images``; ETL8G and ETL9G records have the same image), taken
with the project's preprocessing, ``Preprocess(image_size=…)``, to 28 × 28 ("ETL8G") and 64 × 64
("ETL9G"). Timed, one thread (``torch.set_num_threads(1)``), each the best of ``--repeat`` runs,
the two paths alternating (the machine is shared: the ratio is the figure to read):

- old: the per-image preprocessing as it was before the block path (:class:`OldPreprocess`, a copy
  of that code kept here only for this comparison: per-image median and quantile, an average pool
  for despeckle, 3×3 dilations of the whole batch for the crop's growth, one ``F.interpolate`` per
  image), on float levels ``etl_levels_to_float(levels, 15)``, then stored as uint8 (``to_uint8``);
- new: ``Preprocess.stored(levels, 15)``, levels to uint8 in blocks.

Also printed: the largest difference between the two stored results (the new path without the
steps added after the old one, ``BEFORE_KEYS``: the edge band and hysteresis) and the share of their
pixels that differ, on the timed records and on the shipped sample (real ETL8G layout, 4,500
records).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SHAPES = (("ETL8G-shaped → 28", 28, 1), ("ETL9G-shaped → 64", 64, 2))  # name, image size, seed


# ------------------------------------------------- the per-image path, as it was (for comparison)


@dataclass(frozen=True)
class OldPreprocess:
    """The preprocessing before the block path, with ``Preprocess``'s settings and defaults (its
    module doc describes the steps): each step over the whole batch of floats, then the crop and
    the resize one image at a time."""

    image_size: int = 28
    contrast: str = "stretch"
    threshold: float = 0.35
    crop: bool = True
    margin: float = 0.08
    crop_mass: float = 0.01
    despeckle: int = 3
    crop_connect: float = 0.05
    crop_bridge: float = 0.03
    ink_percentile: float = 99.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.contrast == "stretch":
            flat = x.reshape(len(x), -1)
            background = flat.median(dim=1).values
            ink = torch.quantile(flat, self.ink_percentile / 100, dim=1)
            scale = (ink - background).clamp_min(1e-3)
            x = ((x - background[:, None, None]) / scale[:, None, None]).clamp_(0.0, 1.0)
        if self.threshold > 0:
            x = torch.where(x < self.threshold, torch.zeros_like(x), x)
        if self.despeckle:
            ink = (x > 0).to(x.dtype)[:, None]
            around = F.avg_pool2d(ink, 3, stride=1, padding=1, count_include_pad=True)[:, 0] * 9 - ink[:, 0]
            x = torch.where(around >= self.despeckle - 0.5, x, torch.zeros_like(x))
        if not self.crop:
            return _resize(_pad(x, max(x.shape[-2:]), replicate=True), self.image_size)
        top, bottom, left, right = self.crop_boxes(x)
        out = []
        for img, t, b, l, r in zip(x, top.tolist(), bottom.tolist(), left.tolist(), right.tolist()):
            if not (img > 0).any():
                out.append(_resize(_pad(img[None], max(img.shape), replicate=True), self.image_size)[0])
                continue
            img = img[t : b + 1, l : r + 1]
            side = max(img.shape)
            pad = round(side * self.margin)
            out.append(_resize(_pad(img[None], side + 2 * pad), self.image_size)[0])
        return torch.stack(out)

    def crop_boxes(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        top, bottom = _mass_bounds(x.sum(2), self.crop_mass)
        left, right = _mass_bounds(x.sum(1), self.crop_mass)
        if not (self.crop_connect > 0 and self.crop_mass > 0):
            return top, bottom, left, right
        steps = max(1, math.ceil(self.crop_connect * max(x.shape[-2:])))
        bridge = math.ceil(self.crop_bridge * max(x.shape[-2:]))
        n, h, w = x.shape
        ink = x > 0
        path = ink
        for _ in range(bridge):
            path = _dilate3(path)
        rows, cols = torch.arange(h), torch.arange(w)
        inside = ((rows[None] >= top[:, None]) & (rows[None] <= bottom[:, None]))[:, :, None] & (
            (cols[None] >= left[:, None]) & (cols[None] <= right[:, None])
        )[:, None, :]
        reached = path & inside
        for _ in range(steps):
            grown = _dilate3(reached) & path
            if torch.equal(grown, reached):
                break
            reached = grown
        reached &= ink
        ys, xs = reached.any(2), reached.any(1)
        big = torch.iinfo(torch.long).max
        return (
            torch.minimum(top, torch.where(ys, rows[None], big).amin(1)),
            torch.maximum(bottom, torch.where(ys, rows[None], -1).amax(1)),
            torch.minimum(left, torch.where(xs, cols[None], big).amin(1)),
            torch.maximum(right, torch.where(xs, cols[None], -1).amax(1)),
        )


def _mass_bounds(profile: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    c = profile.cumsum(1)
    c = c / c[:, -1:].clamp_min(1e-12)
    last = profile.shape[1] - 1
    return (c <= q).sum(1).clamp(max=last), (c < 1 - q).sum(1).clamp(max=last)


def _dilate3(m: torch.Tensor) -> torch.Tensor:
    h = m.clone()
    h[:, :, 1:] |= m[:, :, :-1]
    h[:, :, :-1] |= m[:, :, 1:]
    v = h.clone()
    v[:, 1:] |= h[:, :-1]
    v[:, :-1] |= h[:, 1:]
    return v


def _pad(x: torch.Tensor, side: int, replicate: bool = False) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (side - h) // 2, (side - w) // 2
    pads = (left, side - w - left, top, side - h - top)
    return F.pad(x[:, None], pads, mode="replicate")[:, 0] if replicate else F.pad(x, pads, value=0.0)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x.clone()
    out = F.interpolate(x[:, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[:, 0].clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------- the comparison


def old_stored(old: OldPreprocess, levels: np.ndarray, max_level: int, chunk: int = 256) -> np.ndarray:
    """The old path as the cache build ran it: float levels, 256 records at a time, to uint8."""
    from maist.data.dataset import to_uint8
    from maist.data.preprocess import etl_levels_to_float

    parts = [
        to_uint8(old(torch.from_numpy(etl_levels_to_float(levels[i : i + chunk], max_level))))
        for i in range(0, len(levels), chunk)
    ]
    return np.concatenate(parts)


def differences(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """The largest |a - b| of two uint8 arrays and the share of their values that differ."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(d.max()), float((d > 0).mean())


def seconds(run, *args) -> float:
    """Wall time of ``run(*args)``."""
    started = time.perf_counter()
    run(*args)
    return time.perf_counter() - started


def main(argv=None) -> None:
    from benchmarks.bench_decode import random_images
    from maist.data.etl import read_etl
    from maist.data.preprocess import BEFORE_KEYS, Preprocess
    from maist.data.sample import SAMPLE_ZIP

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=4096, help="records the block path is timed on")
    p.add_argument("--old-records", type=int, default=512, help="records the old path is timed on (it is slow)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sample = read_etl(SAMPLE_ZIP)

    print(f"one thread; best of {args.repeat} runs, old and new alternating\n")
    print(
        f"{'':20s} {'old img/s':>10s} {'new img/s':>10s} {'ratio':>7s}   max |diff|, share of stored pixels differing"
    )
    for name, size, seed in SHAPES:
        levels = random_images(args.records, seed)
        few = levels[: args.old_records]
        new, old = Preprocess(image_size=size), OldPreprocess(image_size=size)
        alike = Preprocess(image_size=size, **BEFORE_KEYS)  # without the steps the old path lacks
        old_best = new_best = math.inf
        for _ in range(args.repeat):  # alternating, so both see the same load
            old_best = min(old_best, seconds(old_stored, old, few, 15))
            new_best = min(new_best, seconds(new.stored, levels, 15))
        old_rate, new_rate = len(few) / old_best, len(levels) / new_best
        worst, share = differences(alike.stored(few, 15), old_stored(old, few, 15))
        s_worst, s_share = differences(
            alike.stored(sample.images, sample.max_level), old_stored(old, sample.images, sample.max_level)
        )
        print(
            f"{name:20s} {old_rate:10,.0f} {new_rate:10,.0f} {new_rate / old_rate:6.1f}×   "
            f"generated: {worst}, {share:.1e}; shipped sample: {s_worst}, {s_share:.1e}"
        )


if __name__ == "__main__":
    main()
