"""One preprocessing for every path: training, prediction, export and the web page.

Input is a batch of grey images as float in [0, 1] with the ink bright on a dark
background (ETL levels / 15 already are). Output is (N, S, S) float32 in [0, 1].

Steps, each a config value (``data.preprocess``):
- ``contrast: stretch`` removes each image's background (its median) and stretches its
  ink to 1, so light scans (ETL4C) look like dark ones; ``none`` keeps the levels.
- ``threshold`` zeroes what stays below that fraction of the ink after stretching
  (faint cell frames, scanner noise).
- ``despeckle: k`` (0: off) zeroes ink pixels with fewer than k ink pixels among their 8
  neighbours (scanner specks, dotted remains of a cell frame).
- ``crop: true`` crops to the ink's bounding box and pads it to a square with ``margin``
  (a fraction of its side) on each side, so size and position no longer vary. The box may
  leave out a fraction ``crop_mass`` of the ink mass at each side (rows and columns
  separately), so a speck or a stretch of frame far from the character does not widen it:
  :func:`ink_box`, the one definition of a character's ink box (prediction frames a picture by
  it, and the training images' ink ratio is measured by it). That trim also cuts the outer ink
  of a dakuten or handakuten (top right, where it trims): see ``crop_connect``.
  ``crop_connect`` then grows that box again over the ink connected to what it holds, by at
  most that fraction of the image side: the trimmed ends of the character's own strokes (the
  outer part of a dakuten or handakuten, usually its rightmost and topmost ink) come back,
  while specks and frame pieces apart from the character stay out.
- the square is resized with antialiasing to ``image_size``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from maist import checks
from maist.data.etl import ETL8G

CONTRAST_MODES = ("none", "stretch")
# A character's ink box (:func:`ink_box`) when it is measured rather than cropped to: on the
# training images (their ink-to-frame ratio, which a checkpoint records) and on a user's picture
# (framed to that ratio). Ink is a value above INK_LEVEL (antialiased fringes and faint remains
# are not), weighted by its value, and the box may leave out INK_TRIM of that mass at each side
# (a stray pixel does not widen it). Training's own crop uses the same function with its config
# (``crop_mass``, after ``threshold``).
INK_LEVEL = 0.3
INK_TRIM = 0.003


MAX_IMAGE_SIZE = 256  # ETL scans are 128 × 127 (or 64 × 63): a larger input only costs memory


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing of every path (the steps are in the module doc). Its defaults are the
    project's: ``train.py``'s data config takes them from here (``conf/data/etl.yaml``), so a
    ``Preprocess()`` built in Python is what training uses. The article's plain scaling is
    ``contrast="none", threshold=0, despeckle=0, crop=False`` (the ``seed_*`` experiments).

    Args:
        image_size: side of the square output.
        contrast: ``none`` (values as given) or ``stretch`` (background removed, ink to 1).
        threshold: values below it (after stretching) become 0.
        crop: crop to the ink box and pad it to a square with ``margin``.
        margin: padding on each side, a fraction of the box's longer side.
        crop_mass: ink mass the box may leave out at each side (:func:`ink_box`'s ``trim``).
        despeckle: ink pixels with fewer ink neighbours than this become 0 (0: off).
        crop_connect: the box grows back over connected ink by at most this fraction of the side.
        crop_bridge: that growth crosses gaps of up to twice this fraction of the side.
        ink_percentile: the percentile counted as full ink when stretching.
    """

    image_size: int = 28
    contrast: str = "stretch"  # measured (README): train etl8b2 → test etl4c goes 2% → 38% → 96%
    threshold: float = 0.35  # zero what stays below this after stretching (faint cell frames)
    crop: bool = True
    margin: float = 0.08
    crop_mass: float = 0.01  # the crop may leave out 1% of the ink mass per side (specks, frame) …
    despeckle: int = 3  # drop ink pixels with fewer than 3 ink neighbours (0: off)
    crop_connect: float = 0.05  # … then grows back over ink connected to the box (≤ 5% of the side),
    crop_bridge: float = 0.03  # across gaps ≤ 6%: a dakuten/handakuten is never cut (tests/test_voiced.py)
    ink_percentile: float = 99.0  # the level counted as full ink when stretching

    def __post_init__(self):
        name = "data.preprocess."
        checks.whole("data.image_size", self.image_size, 4, MAX_IMAGE_SIZE)
        checks.choice(name + "contrast", self.contrast, CONTRAST_MODES)
        checks.fraction(name + "threshold", self.threshold)
        checks.flag(name + "crop", self.crop)
        checks.fraction(name + "margin", self.margin, high_open=False)
        checks.number(name + "crop_mass", self.crop_mass, 0.0, 0.5, high_open=True)
        checks.whole(name + "despeckle", self.despeckle, 0, 8)
        checks.fraction(name + "crop_connect", self.crop_connect, high_open=False)
        checks.fraction(name + "crop_bridge", self.crop_bridge, high_open=False)
        checks.number(name + "ink_percentile", self.ink_percentile, 50.0, 100.0)

    def as_dict(self) -> dict:
        return asdict(self)

    def __call__(self, images: np.ndarray | torch.Tensor, batch: int = 2048) -> torch.Tensor:
        """(N, H, W) ink-bright floats in [0, 1] → (N, S, S) float32 tensor."""
        x = torch.as_tensor(images, dtype=torch.float32)
        if x.ndim == 2:
            x = x[None]
        parts = [self._batch(x[i : i + batch]) for i in range(0, len(x), batch)]
        if not parts:
            return torch.empty(0, self.image_size, self.image_size)
        return torch.cat(parts)

    def _batch(self, x: torch.Tensor) -> torch.Tensor:
        if self.contrast == "stretch":
            x = stretch_contrast(x, self.ink_percentile)
        if self.threshold > 0:
            x = torch.where(x < self.threshold, torch.zeros_like(x), x)
        if self.despeckle:
            x = despeckle(x, self.despeckle)
        if self.crop:
            return self._crop_resize(x)
        return resize(pad_to_square(x), self.image_size)

    def crop_boxes(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, H, W) images after threshold and despeckle → (top, bottom, left, right), inclusive,
        of the crop (each (N,) long)."""
        top, bottom, left, right = ink_box(x, self.crop_mass, level=0.0)
        if self.crop_connect > 0 and self.crop_mass > 0:
            steps = max(1, math.ceil(self.crop_connect * max(x.shape[-2:])))
            bridge = math.ceil(self.crop_bridge * max(x.shape[-2:]))
            top, bottom, left, right = grow_box(x > 0, top, bottom, left, right, steps, bridge)
        return top, bottom, left, right

    def _crop_resize(self, x: torch.Tensor, boxes=None) -> torch.Tensor:
        """Crop each image to its box (``crop_boxes`` unless given), pad to a square with the
        margin, resize: linear in ``x`` for given boxes."""
        top, bottom, left, right = self.crop_boxes(x) if boxes is None else boxes
        out = []
        for img, t, b, l, r in zip(x, top.tolist(), bottom.tolist(), left.tolist(), right.tolist()):
            if not (img > 0).any():  # nothing to crop to
                out.append(resize(pad_to_square(img[None]), self.image_size)[0])
                continue
            img = img[t : b + 1, l : r + 1]
            side = max(img.shape)
            pad = round(side * self.margin)
            out.append(resize(pad_to_square(img[None], side + 2 * pad, fill=0.0), self.image_size)[0])
        return torch.stack(out)


def despeckle(x: torch.Tensor, min_neighbours: int) -> torch.Tensor:
    """(N, H, W): zero the ink pixels with fewer than ``min_neighbours`` ink pixels among
    their 8 neighbours."""
    ink = (x > 0).to(x.dtype)[:, None]
    around = F.avg_pool2d(ink, 3, stride=1, padding=1, count_include_pad=True)[:, 0] * 9 - ink[:, 0]
    return torch.where(around >= min_neighbours - 0.5, x, torch.zeros_like(x))


def _dilate3(m: torch.Tensor) -> torch.Tensor:
    """3×3 binary dilation of (N, H, W) bool masks (two separable passes of shifted ORs)."""
    h = m.clone()
    h[:, :, 1:] |= m[:, :, :-1]
    h[:, :, :-1] |= m[:, :, 1:]
    v = h.clone()
    v[:, 1:] |= h[:, :-1]
    v[:, :-1] |= h[:, 1:]
    return v


def grow_box(ink: torch.Tensor, top, bottom, left, right, steps: int, bridge: int = 0) -> tuple[torch.Tensor, ...]:
    """Grow each (N,) box (inclusive bounds) of the (N, H, W) bool ``ink`` to the bounding box
    of the ink reachable from the ink inside it in at most ``steps`` 8-connected steps through
    ink, or through gaps of up to ``2 · bridge`` pixels between inked pixels: the trimmed ends
    of the strokes the box cuts come back, and the marks beside them; ink apart does not."""
    n, h, w = ink.shape
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
    first = lambda m, idx: torch.where(m, idx[None], big).amin(1)  # noqa: E731
    last = lambda m, idx: torch.where(m, idx[None], -1).amax(1)  # noqa: E731
    return (
        torch.minimum(top, first(ys, rows)),
        torch.maximum(bottom, last(ys, rows)),
        torch.minimum(left, first(xs, cols)),
        torch.maximum(right, last(xs, cols)),
    )


def ink_box(x: torch.Tensor, trim: float = INK_TRIM, level: float = INK_LEVEL) -> tuple[torch.Tensor, ...]:
    """A character's ink box, the one definition (training's crop, the training images' ink ratio
    and prediction's framing of a picture all use it).

    Args:
        x: (N, H, W) ink-bright images in [0, 1].
        trim: the fraction of the ink mass the box may leave out at each side, rows and columns
            separately (0: every ink pixel).
        level: ink is what lies above it, weighted by its value (0: every value counts).

    Returns:
        (top, bottom, left, right), inclusive, each (N,) long. An image without ink gets its last
        row and column (a box of one pixel).
    """
    mass = x if level <= 0 else torch.where(x > level, x, torch.zeros_like(x))
    top, bottom = mass_bounds(mass.sum(2), trim)
    left, right = mass_bounds(mass.sum(1), trim)
    return top, bottom, left, right


def mass_bounds(profile: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) ink profiles → first and last index of the span that leaves out at most a
    fraction ``q`` of the ink mass at each end (``q = 0``: the first and last ink)."""
    c = profile.cumsum(1)
    c = c / c[:, -1:].clamp_min(1e-12)
    return (c <= q).sum(1).clamp(max=profile.shape[1] - 1), (c < 1 - q).sum(1).clamp(max=profile.shape[1] - 1)


def etl_levels_to_float(levels: np.ndarray, max_level: int = ETL8G.max_level) -> np.ndarray:
    """ETL levels (0 = paper, ``max_level`` = ink) → float32 in [0, 1], ink bright.

    ``max_level`` is the decoded records' (``EtlRecords.max_level``): 15 for 4-bit layouts,
    1 for the binary B-type (ETL8B2, ETL9B).
    """
    return levels.astype(np.float32) / max_level


def stretch_contrast(x: torch.Tensor, ink_percentile: float = 99.0) -> torch.Tensor:
    """Per image: subtract the background (median), divide by the ink level, clip to [0, 1]."""
    flat = x.reshape(len(x), -1)
    background = flat.median(dim=1).values
    ink = torch.quantile(flat, ink_percentile / 100, dim=1)
    scale = (ink - background).clamp_min(1e-3)
    out = (x - background[:, None, None]) / scale[:, None, None]
    return out.clamp_(0.0, 1.0)


def pad_to_square(x: torch.Tensor, side: int | None = None, fill: float | None = None) -> torch.Tensor:
    """Centre (N, H, W) in (N, side, side); pad with ``fill`` or each image's edge values."""
    h, w = x.shape[-2:]
    side = side or max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    pads = (left, side - w - left, top, side - h - top)
    if fill is None:
        return F.pad(x[:, None], pads, mode="replicate")[:, 0]
    return F.pad(x, pads, value=fill)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) → (N, size, size), bilinear with antialiasing."""
    if x.shape[-2:] == (size, size):
        return x.clone()
    out = F.interpolate(x[:, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[:, 0].clamp_(0.0, 1.0)
