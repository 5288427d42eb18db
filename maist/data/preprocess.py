"""One preprocessing for every path: training, prediction, export and the web page.

Input is a batch of grey images as float in [0, 1] with the ink bright on a dark
background (ETL levels / 15 already are). Output is (N, S, S) float32 in [0, 1].

Steps, each a config value (``data.preprocess``):
- ``contrast: stretch`` removes each image's background (its median) and stretches its
  ink to 1, so light scans (ETL4C) look like dark ones; ``none`` keeps the levels.
- ``threshold`` zeroes what stays below that fraction of the ink after stretching
  (faint cell frames, scanner noise).
- ``threshold_low`` (hysteresis, 0: off) keeps what lies between it and ``threshold`` where it
  is connected, within ``threshold_reach`` of the side, to ink above ``threshold``: a faint
  dakuten's fringe and a light stroke's edges stay, a faint cell frame apart from the strokes goes.
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
  ``crop_border``: ink within that fraction of the side of an edge does not start the box (scan
  smudges and a neighbouring cell's strokes lie there on some ETL8G scans); the box still grows
  into that band over ink connected to it (``crop_connect``). An image with ink only there is
  boxed as if the band were inside.
- the square is resized with antialiasing to ``image_size``.

Every step runs on a block of images at once (:data:`BLOCK` of them, so memory stays bounded):
the ink masks are bit-packed, eight images a byte, for despeckle and the crop's growth
(:mod:`maist.morphology`), and each image's crop, pad and resize are two small matrix products, the
antialiased resize's own weights cut to its box (:func:`frame_weights`). :meth:`Preprocess.stored`
takes the cache build's decoded ETL levels straight to the stored uint8 images, each image's median
and ink percentile read off its level histogram (:func:`level_contrast`). Against the per-image
computation this replaced (one ``F.interpolate`` per image; ``benchmarks/bench_preprocess.py``
keeps it for comparison) the crop boxes are the same and the values are the same sums taken in
another order: they differ by a few 1e-7 at most, so a stored pixel differs by at most 1, on about
1e-5 of the pixels of real records (``tests/test_preprocess.py`` holds both to this).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from maist import checks, morphology
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


MIN_INK_RANGE = 1e-3  # stretching: the ink level counts as at least this far above the background
BLOCK = 256  # images preprocessed at a time (their float copies: 17 MB at 127 × 128)
FRAME_GROUP = 64  # images cropped and resized together (speed only: the result is the same)
PIXEL_MAX = 255  # stored pixel = round(PIXEL_MAX × preprocessed value in [0, 1])


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Preprocessed floats in [0, 1] → the stored uint8 ``round(255 x)``."""
    return x.mul(PIXEL_MAX).round_().clamp_(0, PIXEL_MAX).to(torch.uint8).numpy()


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Stored uint8 images → float32 in [0, 1] (on ``x``'s device): what the networks take."""
    return x.to(torch.float32).div_(PIXEL_MAX)


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
        crop_border: the band at each edge, a fraction of the side, whose ink does not start the box.
        ink_percentile: the percentile counted as full ink when stretching.
        threshold_low: values from it up to ``threshold`` are kept where connected to values above
            ``threshold`` (hysteresis; 0, or not below ``threshold``: off).
        threshold_reach: how far (a fraction of the side) that connection may run through them.
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
    crop_border: float = 0.05  # edge smudges of ETL8G scans stay out of the box (docs/results.md)
    threshold_low: float = 0.25  # hysteresis: faint ink kept where it touches ink above threshold (faint dakuten)
    threshold_reach: float = 0.05  # … through at most this fraction of the side

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
        checks.number(name + "crop_border", self.crop_border, 0.0, 0.25)
        checks.fraction(name + "threshold_low", self.threshold_low)
        checks.fraction(name + "threshold_reach", self.threshold_reach, high_open=False)

    def as_dict(self) -> dict:
        return asdict(self)

    def __call__(self, images: np.ndarray | torch.Tensor, batch: int = BLOCK) -> torch.Tensor:
        """(N, H, W) ink-bright floats in [0, 1] (on the CPU) → (N, S, S) float32 tensor, ``batch``
        images at a time."""
        x = torch.as_tensor(images, dtype=torch.float32)
        if x.ndim == 2:
            x = x[None]
        out = torch.empty(len(x), self.image_size, self.image_size)
        for i in range(0, len(x), batch):
            out[i : i + batch] = self._floats(x[i : i + batch])
        return out

    def stored(self, levels: np.ndarray, max_level: int) -> np.ndarray:
        """Decoded ETL levels (N, H, W) uint8 (0 = paper … ``max_level`` = ink, as
        :func:`etl_levels_to_float` takes them) → the stored images (N, S, S) uint8, i.e.
        ``to_uint8(self(etl_levels_to_float(levels, max_level)))`` (within the module doc's
        tolerance), computed on the levels :data:`BLOCK` images at a time (memory: a block's
        float copy, 17 MB at 127 × 128, and its temporaries)."""

        levels = np.asarray(levels)
        if levels.size and levels.max() > max_level:
            raise ValueError(f"levels up to {levels.max()} given with max_level={max_level}")
        levels = torch.from_numpy(np.ascontiguousarray(levels, dtype=np.uint8))
        if levels.ndim == 2:
            levels = levels[None]
        out = np.empty((len(levels), self.image_size, self.image_size), dtype=np.uint8)
        floats = torch.empty(min(BLOCK, len(levels)), *levels.shape[1:])  # each block's images, reused
        for i in range(0, len(levels), BLOCK):
            block = levels[i : i + BLOCK]
            out[i : i + BLOCK] = to_uint8(self._levels(block, max_level, floats[: len(block)]))
        return out

    def _floats(self, x: torch.Tensor) -> torch.Tensor:
        if self.contrast == "stretch":
            x = stretch_contrast(x, self.ink_percentile)
        x = self._threshold(x)
        keep, ink = self._clean(x > 0, lambda: x >= self.threshold)
        return self._frame(x * keep if self.despeckle or self._hysteresis else x, ink)

    def _levels(self, levels: torch.Tensor, max_level: int, out: torch.Tensor) -> torch.Tensor:
        """A block of levels → (N, S, S) floats, its images held in ``out`` (N, H, W) meanwhile.
        Each image's levels get their values from a table: the contrast and threshold steps'
        arithmetic on :func:`etl_levels_to_float`'s values; ink is every level above the last that
        comes out 0 (values rise with the level)."""
        values = torch.from_numpy(etl_levels_to_float(np.arange(max_level + 1), max_level))
        table = values.expand(len(levels), -1)
        if self.contrast == "stretch":
            table = stretch(table, *level_contrast(levels, values, self.ink_percentile))
        table = self._threshold(table).contiguous()
        paper = ((table <= 0).sum(1) - 1).to(torch.uint8).numpy()[:, None, None]
        faint = ((table < self.threshold).sum(1) - 1).to(torch.uint8).numpy()[:, None, None]
        keep, ink = self._clean(levels.numpy() > paper, lambda: levels.numpy() > faint)
        return self._frame(lookup(table, levels.numpy() * keep.numpy(), out), ink)

    @property
    def _hysteresis(self) -> bool:
        return 0 < self.threshold_low < self.threshold

    def _threshold(self, x: torch.Tensor) -> torch.Tensor:
        """Zero what lies below the threshold (the lower one with hysteresis)."""
        low = self.threshold_low if self._hysteresis else self.threshold
        return torch.where(x < low, torch.zeros_like(x), x) if low > 0 else x

    def _clean(self, ink, strong) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, H, W) bool ink above the (lower) threshold → the ink kept, as a mask and bit-packed
        (:func:`maist.morphology.pack`, for the crop's growth): with hysteresis, what is reached
        from ``strong()`` (the ink above ``threshold``) within ``threshold_reach``; then what
        :func:`despeckle` keeps of it."""
        packed = morphology.pack(ink)
        if self._hysteresis:
            steps = max(1, math.ceil(self.threshold_reach * max(ink.shape[-2:])))
            packed = morphology.grow_within(morphology.pack(strong()), packed, steps)
        if self.despeckle:
            packed &= morphology.crowded(packed, self.despeckle)
        if not (self.despeckle or self._hysteresis):
            return torch.as_tensor(ink), packed
        return morphology.unpack(packed, len(ink)), packed

    def _frame(self, x: torch.Tensor, ink: torch.Tensor) -> torch.Tensor:
        if self.crop:
            return self._crop_resize(x, self.crop_boxes(x, ink))
        return resize(pad_to_square(x), self.image_size)

    def crop_boxes(self, x: torch.Tensor, ink: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(N, H, W) images after threshold and despeckle → (top, bottom, left, right), inclusive,
        of the crop (each (N,) long). ``ink``: their ink bit-packed, if already at hand."""
        grows = self.crop_connect > 0 and self.crop_mass > 0
        if ink is None and (grows or self.crop_border > 0):
            ink = morphology.pack(x > 0)
        top, bottom, left, right = self._inner_box(x, ink)
        if grows:
            steps = max(1, math.ceil(self.crop_connect * max(x.shape[-2:])))
            bridge = math.ceil(self.crop_bridge * max(x.shape[-2:]))
            top, bottom, left, right = grow_box(ink, top, bottom, left, right, steps, bridge)
        return top, bottom, left, right

    def _inner_box(self, x: torch.Tensor, ink: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """:func:`ink_box` of the ink outside the ``crop_border`` band (of all of it where there is
        none outside), in ``x``'s coordinates; ``ink``: ``x > 0`` bit-packed (needed with a band)."""
        band = round(self.crop_border * max(x.shape[-2:]))
        if band == 0:
            return ink_box(x, self.crop_mass, level=0.0)
        inner = x[:, band:-band, band:-band]
        box = [b + band for b in ink_box(inner, self.crop_mass, level=0.0)]
        planes = ink.numpy()[:, band:-band, band:-band].reshape(len(ink), -1)
        inked = morphology.unpack(torch.from_numpy(np.bitwise_or.reduce(planes, axis=1)), len(x))
        empty = torch.nonzero(~inked).flatten()
        if len(empty):
            for b, f in zip(box, ink_box(x[empty], self.crop_mass, level=0.0)):
                b[empty] = f
        return tuple(box)

    def _crop_resize(self, x: torch.Tensor, boxes) -> torch.Tensor:
        """Crop each image to its box, pad it to a square with the margin and resize it, as two
        matrix products per image, ``rowsᵀ @ x @ cols``: the weights :func:`resize` gives the
        padded square (:func:`resize_weights`), cut to the box (the padding adds nothing). Images
        go :data:`FRAME_GROUP` at a time, sorted by frame size, each group cut to its largest box."""
        n, h, w = x.shape
        top, bottom, left, right = (v.numpy() for v in boxes)
        heights, widths = bottom - top + 1, right - left + 1
        sides = np.maximum(heights, widths)
        sides += 2 * np.rint(sides * self.margin).astype(sides.dtype)
        table, first = weight_table(sides, self.image_size)
        out = torch.empty(n, self.image_size, self.image_size)
        for group in np.array_split(np.argsort(sides, kind="stable"), max(1, -(-n // FRAME_GROUP))):
            tall, wide = int(heights[group].max()), int(widths[group].max())
            y0, x0 = np.minimum(top[group], h - tall), np.minimum(left[group], w - wide)  # the cut
            cut = np.lib.stride_tricks.sliding_window_view(x.numpy(), (tall, wide), axis=(1, 2))[group, y0, x0]
            rows = frame_weights(table, first[group], top[group] - y0, heights[group], sides[group], tall)
            cols = frame_weights(table, first[group], left[group] - x0, widths[group], sides[group], wide)
            out[torch.from_numpy(group)] = torch.bmm(rows.transpose(1, 2), torch.bmm(torch.from_numpy(cut), cols))
        return out.clamp_(0.0, 1.0)


# Settings added after checkpoints were first written, and the value that does what those did
# without them: a checkpoint that predates a key is read with it (never with today's default).
BEFORE_KEYS = {"crop_border": 0.0, "threshold_low": 0.0, "threshold_reach": 0.05}


def as_recorded(settings) -> dict:
    """A checkpoint's recorded preprocessing (its ``preprocess`` hyper-parameters), with every key
    it predates (:data:`BEFORE_KEYS`) set as it behaved then: ``Preprocess(**as_recorded(…))``
    preprocesses as its training did."""
    return {**BEFORE_KEYS, **dict(settings)}


def despeckle(x: torch.Tensor, min_neighbours: int) -> torch.Tensor:
    """(N, H, W): zero the ink pixels with fewer than ``min_neighbours`` ink pixels among
    their 8 neighbours."""
    return torch.where(morphology.crowded(x > 0, min_neighbours), x, torch.zeros_like(x))


def grow_box(ink: torch.Tensor, top, bottom, left, right, steps: int, bridge: int = 0) -> tuple[torch.Tensor, ...]:
    """Grow each (N,) box (inclusive bounds) of the (N, H, W) ink, bit-packed
    (:func:`maist.morphology.pack`), to the bounding box of the ink reachable from the ink inside
    it in at most ``steps`` 8-connected steps through ink, or through gaps of up to ``2 · bridge``
    pixels between inked pixels: the trimmed ends of the strokes the box cuts come back, and the
    marks beside them; ink apart does not."""
    n, (h, w) = len(top), ink.shape[-2:]
    path = morphology.dilate(ink, morphology.square(bridge)) if bridge else ink
    rows, cols = morphology.pack(_span(top, bottom, h)), morphology.pack(_span(left, right, w))
    inside = path & rows[:, :, None] & cols[:, None, :]
    reached = morphology.grow_within(inside, path, steps) & ink
    ys, xs = (morphology.unpack(morphology.or_along(reached, dim), n) for dim in (2, 1))
    big = torch.iinfo(torch.long).max
    first = lambda m: torch.where(m, torch.arange(m.shape[1])[None], big).amin(1)  # noqa: E731
    last = lambda m: torch.where(m, torch.arange(m.shape[1])[None], -1).amax(1)  # noqa: E731
    return (
        torch.minimum(top, first(ys)),
        torch.maximum(bottom, last(ys)),
        torch.minimum(left, first(xs)),
        torch.maximum(right, last(xs)),
    )


def _span(start: torch.Tensor, end: torch.Tensor, length: int) -> torch.Tensor:
    """(N,) inclusive bounds → (N, length) bool, set from start to end."""
    idx = torch.arange(length)
    return (idx[None] >= start[:, None]) & (idx[None] <= end[:, None])


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
    return stretch(x, flat.median(dim=1).values, torch.quantile(flat, ink_percentile / 100, dim=1))


def stretch(x: torch.Tensor, background: torch.Tensor, ink: torch.Tensor) -> torch.Tensor:
    """(N, ...) values, each image's (N,) background and ink level → ``(x - background) /
    (ink - background)`` clipped to [0, 1] (the ink at least ``MIN_INK_RANGE`` above the background)."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    scale = (ink - background).clamp_min(MIN_INK_RANGE)
    out = (x - background.view(shape)) / scale.view(shape)
    return out.clamp_(0.0, 1.0)


def level_contrast(levels: torch.Tensor, values: torch.Tensor, ink_percentile: float) -> tuple[torch.Tensor, ...]:
    """(N, H, W) uint8 levels and each level's value → what :func:`stretch_contrast` takes of those
    values: each image's background (median) and ink level (``ink_percentile``), read off its level
    histogram at the ranks ``torch.median`` and ``torch.quantile`` take."""
    at_or_below = level_counts(levels, len(values) - 1).cumsum(1)
    pixels = levels[0].numel()

    def ranked(rank):  # each image's value at that rank of its sorted pixels
        return values[(at_or_below <= rank).sum(1)]

    rank = float(np.float32(ink_percentile / 100)) * (pixels - 1)  # torch.quantile's: its float32 q, in double
    weight = torch.tensor(rank - math.floor(rank), dtype=torch.float32)
    return ranked((pixels - 1) // 2), ranked(math.floor(rank)).lerp(ranked(math.ceil(rank)), weight)


def lookup(table: torch.Tensor, levels: np.ndarray, out: torch.Tensor) -> torch.Tensor:
    """(N, L) float32 table, (N, H, W) uint8 levels below L → ``table[n][levels[n]]`` in ``out``."""
    rows, dst = table.numpy(), out.numpy()
    for k in range(len(levels)):
        np.take(rows[k], levels[k], out=dst[k], mode="wrap")  # the levels lie in the table: the quickest mode
    return out


def level_counts(levels: torch.Tensor, max_level: int) -> torch.Tensor:
    """(N, H, W) uint8 levels (each ≤ ``max_level``) → (N, max_level + 1) long: each image's pixels
    at each level. One ``bincount`` covers the images whose levels, moved to a range of bytes of
    their own, fit in a byte."""
    bins = max_level + 1
    per = max(1, 256 // bins)
    shift = (torch.arange(per) * bins).to(torch.uint8)[:, None, None]
    parts = [
        torch.bincount((part + shift[: len(part)]).flatten(), minlength=len(part) * bins).view(len(part), bins)
        for part in levels.split(per)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, bins, dtype=torch.long)


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
    return _antialiased(x[:, None], (size, size))[:, 0].clamp_(0.0, 1.0)


@functools.cache
def resize_weights(side: int, size: int) -> np.ndarray:
    """(side, size) float32: how much of each of ``side`` pixels :func:`resize` puts in each of
    ``size`` (its own weights, read off by resizing an identity; at equal sizes it copies)."""
    if side == size:
        return np.eye(size, dtype=np.float32)
    return np.ascontiguousarray(_antialiased(torch.eye(side)[None, None], (size, side))[0, 0].numpy().T)


def weight_table(sides: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The :func:`resize_weights` of every frame side among ``sides`` one after another, below a
    zero row, and where each of ``sides`` starts in that table."""
    kinds, kind = np.unique(sides, return_inverse=True)
    table = np.concatenate([np.zeros((1, size), np.float32), *(resize_weights(int(s), size) for s in kinds)])
    return table, 1 + np.concatenate([[0], np.cumsum(kinds)[:-1]])[kind]


def frame_weights(
    table: np.ndarray, first: np.ndarray, start: np.ndarray, length: np.ndarray, sides: np.ndarray, extent: int
) -> torch.Tensor:
    """Per image, the span of ``length`` pixels from ``start`` (of ``extent``) centred in a frame
    of ``sides`` pixels, whose weights begin at row ``first`` of ``table`` (:func:`weight_table`):
    (N, extent, size), each pixel's weights in the resized frame (0 outside the span)."""
    pixel = np.arange(extent)[None]
    in_frame = pixel - start[:, None] + ((sides - length) // 2)[:, None]
    inside = (pixel >= start[:, None]) & (pixel < (start + length)[:, None])
    return torch.from_numpy(table.take(np.where(inside, first[:, None] + in_frame, 0), axis=0))


def _antialiased(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
