"""Pictures of what a network sees and does, drawn with numpy and PIL (no matplotlib).

Every function returns a ``uint8`` numpy array: grey ``(H, W)`` or colour ``(H, W, 3)``, ready
for TensorBoard (``add_image(..., dataformats="HW"/"HWC")``), a PNG (:func:`save_png`) or a web
page. They are shared by the training callback, the command line and the web demo.

The article's figures, for one input image: the 32 first-layer filters, the 32 filtered images
(``conv1``), the same after ReLU (``relu1``), the 14×14 pooled maps (``pool1``) and, one layer
deeper, the 7×7×64 maps (``pool2``): see :func:`feature_figures`.

Text is drawn in the font MAIST ships (:func:`font_path`), so class names are glyphs on any machine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from maist.files import atomic_path
from maist.fonts import FONT

__all__ = [
    "tile_grid",
    "filter_grid",
    "feature_figures",
    "bar_chart",
    "confusion_image",
    "gallery",
    "histogram",
    "stack_rows",
    "font_path",
    "save_png",
    "grid_columns",
    "colormap",
]

WHITE, BLACK = (255, 255, 255), (0, 0, 0)
HISTOGRAM_MARGINS = (44, 12, 24, 34)  # left, right, top, bottom: room for the labels
TEXT, MUTED, BAR, BAR_TOP, WRONG = (30, 30, 30), (120, 120, 120), (150, 170, 200), (40, 100, 190), (200, 40, 40)


# ---------------------------------------------------------------------- arrays and files
def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.isfinite(x), x, 0.0)  # a diverged model's NaN maps draw as zeros


def _as_stack(maps) -> np.ndarray:
    """(K, H, W) from (H, W), (K, H, W), (K, 1, H, W) or (1, K, H, W)."""
    x = _to_numpy(maps)
    if x.ndim == 2:
        return x[None]
    if x.ndim == 3:
        return x
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim == 4 and x.shape[0] == 1:
        return x[0]
    raise ValueError(f"expected maps shaped (K, H, W), (K, 1, H, W) or (1, K, H, W), got {tuple(x.shape)}")


def save_png(array, path, compress_level: int = 6) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array as a PNG, atomically (temp file + rename);
    creates the parent folders. Returns the path. ``compress_level`` 1 is ~2× faster, ~10% larger."""
    path = Path(path)
    img = Image.fromarray(np.ascontiguousarray(np.asarray(array, dtype=np.uint8)))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", compress_level=compress_level)
    return path


# ---------------------------------------------------------------------- grids
def grid_columns(k: int) -> int:
    """Columns for k tiles: the smallest divisor of k between √k and 2√k (32 → 8×4, 64 → 8×8),
    else ⌈√k⌉ (71 → 9 columns, 8 rows)."""
    if k <= 0:
        return 1
    root = math.sqrt(k)
    for c in range(math.ceil(root), int(2 * root) + 1):
        if k % c == 0:
            return c
    return math.ceil(root)


def _auto_scale(h: int, w: int, min_size: int) -> int:
    """The smallest integer upscale that makes the shorter side at least min_size."""
    return max(1, math.ceil(min_size / max(1, min(h, w))))


def _normalize(x: np.ndarray, normalize) -> np.ndarray:
    """Map a (K, H, W) stack to [0, 1].

    'each': every tile min-max on its own; 'all': one min-max for the stack; 'none': values are
    already in [0, 1] (clipped); (lo, hi): a fixed range. A constant tile (or stack) is black.
    """
    if isinstance(normalize, (tuple, list)):
        lo, hi = (float(v) for v in normalize)
        return np.clip((x - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    if normalize in (None, "none"):
        return np.clip(x, 0.0, 1.0)
    if normalize == "each":
        lo = x.min(axis=(1, 2), keepdims=True)
        hi = x.max(axis=(1, 2), keepdims=True)
    elif normalize == "all":
        lo, hi = x.min(keepdims=True), x.max(keepdims=True)
    else:
        raise ValueError(f"normalize must be 'each', 'all', 'none' or (lo, hi), got {normalize!r}")
    rng = hi - lo
    flat = rng <= 1e-6 * np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))  # constant: no contrast
    out = (x - lo) / np.where(flat, 1.0, rng)
    return np.where(flat, 0.0, out)


def _assemble(
    tiles01: np.ndarray, ncols: int | None, pad: int, scale: int | None, min_size: int, pad_value: int
) -> np.ndarray:
    """Lay out (K, h, w) values in [0, 1] as one grey uint8 image, row by row."""
    k, h, w = tiles01.shape
    ncols = max(1, min(ncols or grid_columns(k), k))
    nrows = math.ceil(k / ncols)
    s = scale or _auto_scale(h, w, min_size)
    tiles = np.round(tiles01 * 255.0).astype(np.uint8)
    if s > 1:
        tiles = tiles.repeat(s, axis=1).repeat(s, axis=2)  # nearest neighbour
    th, tw = h * s, w * s
    out = np.full((nrows * th + (nrows - 1) * pad, ncols * tw + (ncols - 1) * pad), pad_value, np.uint8)
    for i in range(k):
        r, c = divmod(i, ncols)
        y, x = r * (th + pad), c * (tw + pad)
        out[y : y + th, x : x + tw] = tiles[i]
    return out


def tile_grid(
    maps,
    ncols: int | None = None,
    pad: int = 1,
    scale: int | None = None,
    normalize="each",
    min_size: int = 28,
    pad_value: int = 255,
) -> np.ndarray:
    """K maps (K, H, W) → one grey uint8 image of tiles, row-major, ``pad`` white pixels between.

    Each tile is min-max normalised on its own by default (``normalize='all'``: one scale for
    all tiles; ``'none'``: values already in [0, 1]; or a ``(lo, hi)`` range); a constant tile is
    black. Tiles are enlarged by the integer ``scale`` with nearest neighbour; by default the
    smallest one that makes a tile at least ``min_size`` pixels (7×7 → ×4, 14×14 → ×2).
    The result is ``nrows*H*scale + (nrows-1)*pad`` by ``ncols*W*scale + (ncols-1)*pad``, where
    ``ncols`` defaults to :func:`grid_columns` (32 maps: 8 columns × 4 rows).
    """
    x = _as_stack(maps)
    return _assemble(_normalize(x, normalize), ncols, pad, scale, min_size, pad_value)


def filter_grid(
    weight,
    ncols: int | None = None,
    pad: int = 4,
    scale: int | None = None,
    normalize="each",
    min_size: int = 40,
    pad_value: int = 255,
) -> np.ndarray:
    """Convolution weights (C, 1, k, k) → grey grid with a diverging scale: 0 is mid grey (128),
    positive weights lighter, negative darker, so the sign of each weight shows.

    ``normalize='each'`` scales every filter by its own largest |w| (its pattern shows even when
    it is small); ``'all'`` uses one scale for all (relative strength shows). Weights with several
    input channels (C, Cin, k, k) give C rows of Cin tiles.
    """
    w = _to_numpy(weight)
    if w.ndim == 4:
        ncols = ncols or (w.shape[1] if w.shape[1] > 1 else None)
        w = w.reshape(-1, w.shape[2], w.shape[3])
    x = _as_stack(w)
    if normalize == "each":
        m = np.abs(x).max(axis=(1, 2), keepdims=True)
    elif normalize == "all":
        m = np.abs(x).max(keepdims=True)
    else:
        raise ValueError(f"normalize must be 'each' or 'all', got {normalize!r}")
    tiles01 = 0.5 + 0.5 * x / np.where(m > 0, m, 1.0)
    return _assemble(tiles01, ncols, pad, scale, min_size, pad_value)


# ---------------------------------------------------------------------- the article's figures
def _first_input_conv(net: torch.nn.Module) -> torch.nn.Conv2d | None:
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d) and m.in_channels == 1:
            return m
    return None


def feature_figures(
    net: torch.nn.Module, image, normalize="each", min_size: int = 56, input_size: int = 112
) -> dict[str, np.ndarray]:
    """The article's figures for one input image (1, 1, S, S) (or (1, S, S), (S, S)), in [0, 1].

    Always ``"input"`` (the image, ink bright, enlarged to ``input_size`` pixels). For a network
    with ``features(x) -> dict`` (DeepMnistCNN) one tile grid per map, in the network's order:
    ``"conv1"`` (32 maps), ``"relu1"``, ``"pool1"`` (32 of 14×14), ``"conv2"``, ``"relu2"``,
    ``"pool2"`` (64 of 7×7), tiles enlarged to at least ``min_size`` pixels. ``"filters"``: the
    first convolution on the image (:func:`filter_grid`), when the network has one. A network
    whose ``fc`` reads the flattened image (LinearSoftmax) gets ``"weights"``: each class's
    weight row as an S×S template, diverging scale (0 = mid grey).

    Runs under ``torch.no_grad()``; the caller picks train/eval mode (use eval).
    """
    x = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image))
    while x.dim() < 4:
        x = x.unsqueeze(0)
    if x.shape[:2] != (1, 1):
        raise ValueError(f"expected one image (1, 1, S, S), got {tuple(x.shape)}")
    side = x.shape[-1]
    figs = {"input": tile_grid(x[0], normalize="none", min_size=input_size)}
    param = next(net.parameters(), None)
    with torch.no_grad():
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype)
        if callable(getattr(net, "features", None)):
            for name, fmap in net.features(x).items():
                figs[name] = tile_grid(fmap[0], normalize=normalize, min_size=min_size)
        conv = _first_input_conv(net)
        if conv is not None:
            figs["filters"] = filter_grid(conv.weight)
        fc = getattr(net, "fc", None)
        if conv is None and isinstance(fc, torch.nn.Linear) and fc.in_features == side * x.shape[-2]:
            templates = fc.weight.reshape(fc.out_features, x.shape[-2], side)
            figs["weights"] = filter_grid(templates, min_size=min_size)
    return figs


# ---------------------------------------------------------------------- fonts and text
def font_path() -> Path:
    """The font the figures are drawn with: ``$MAIST_FONT`` if it names a file, else the one MAIST
    ships (:data:`maist.fonts.FONT`, Noto Sans CJK JP cut down to every class set's characters,
    ASCII and the figures' signs), so that a figure looks the same on every machine."""
    env = os.environ.get("MAIST_FONT")
    if env and os.path.isfile(env):
        return Path(env)
    if not FONT.is_file():
        raise FileNotFoundError(f"{FONT} is missing: it is package data of maist (maist/fonts); reinstall maist")
    return FONT


@lru_cache(maxsize=32)
def _load_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def _font(size: int) -> ImageFont.FreeTypeFont:
    """The figures' font at a pixel size."""
    return _load_font(font_path(), size)


def _label_text(label, classes: Sequence[str] | None) -> str:
    """A class label as text: its name (a class index looked up in ``classes``), else ``#index``."""
    if isinstance(label, (int, np.integer)) or (isinstance(label, torch.Tensor) and label.dim() == 0):
        idx = int(label)
        return str(classes[idx]) if classes is not None and 0 <= idx < len(classes) else f"#{idx}"
    return str(label)


def _draw_text(draw: ImageDraw.ImageDraw, xy, text: str, size: int, fill, anchor: str = "la") -> None:
    draw.text(xy, text, fill=fill, font=_font(size), anchor=anchor)


def _text_width(text: str, size: int) -> int:
    return math.ceil(_font(size).getlength(text))


# ---------------------------------------------------------------------- charts
def bar_chart(
    labels: Sequence,
    probs,
    width: int = 360,
    height: int | None = None,
    classes: Sequence[str] | None = None,
    row_height: int = 36,
) -> np.ndarray:
    """A top-k prediction as horizontal bars, best first as given: label, bar, percentage.

    ``labels``: class names or class indices (looked up in ``classes``). ``probs`` in [0, 1].
    RGB (H, W, 3) uint8.
    """
    p = _to_numpy(probs).reshape(-1)
    labels = list(labels)
    if len(labels) != len(p):
        raise ValueError(f"{len(labels)} labels but {len(p)} probabilities")
    n = max(1, len(p))
    height = height or n * row_height + 8
    rh = (height - 8) / n
    size = max(8, int(rh * 0.62))
    texts = [_label_text(lab, classes) for lab in labels]
    label_w = max([_text_width(t, size) for t in texts] + [size]) + 12
    pct_w = _text_width("100.0%", max(8, int(size * 0.75))) + 10
    bar_w = max(10, width - label_w - pct_w - 8)
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    for i, (t, v) in enumerate(zip(texts, p)):
        v = float(np.clip(v, 0.0, 1.0))
        y0 = 4 + i * rh
        cy = y0 + rh / 2
        _draw_text(draw, (label_w - 8, cy), t, size, TEXT, "rm")
        draw.rectangle([label_w, y0 + rh * 0.15, label_w + bar_w, y0 + rh * 0.85], fill=(238, 238, 238))
        if v > 0:
            draw.rectangle(
                [label_w, y0 + rh * 0.15, label_w + max(1, round(v * bar_w)), y0 + rh * 0.85],
                fill=BAR_TOP if i == 0 else BAR,
            )
        _draw_text(draw, (label_w + bar_w + 6, cy), f"{100 * v:.1f}%", max(8, int(size * 0.75)), TEXT, "lm")
    return np.asarray(img)


# Matplotlib's viridis at nine points; dark (0) to bright yellow (1).
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    np.float64,
)


def colormap(values) -> np.ndarray:
    """Values in [0, 1] → viridis RGB uint8 (shape + (3,))."""
    v = np.clip(_to_numpy(values), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    i = np.minimum(np.floor(v).astype(int), len(_VIRIDIS) - 2)
    f = (v - i)[..., None]
    return np.round(_VIRIDIS[i] * (1 - f) + _VIRIDIS[i + 1] * f).astype(np.uint8)


def confusion_image(
    cm,
    classes: Sequence[str] | None = None,
    cell: int = 12,
    normalize: str | None = "true",
    gamma: float = 0.5,
    labels: bool = True,
    counts: bool = False,
) -> np.ndarray:
    """A confusion matrix (rows: true class, columns: predicted) as a viridis heatmap, RGB uint8.

    ``normalize='true'`` divides each row by its count (the diagonal is each class's recall);
    None: divides by the largest count. Brightness is value**gamma, so that a few per cent of
    confusion still shows. Each cell is ``cell`` pixels (at least 6); with ``counts`` it shows its
    count. With ``labels`` the class names (``#index`` without ``classes``) run along the left
    (true) and top (predicted) margins, every k-th one when they are wider than a cell; without,
    cell (i, j) is exactly ``[i*cell:(i+1)*cell, j*cell:(j+1)*cell]``.
    """
    m = _to_numpy(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square count matrix, got {tuple(m.shape)}")
    n = m.shape[0]
    cell = max(6, int(cell))
    if normalize == "true":
        v = m / np.maximum(m.sum(axis=1, keepdims=True), 1e-12)
    elif normalize is None:
        v = m / max(m.max(), 1e-12)
    else:
        raise ValueError(f"normalize must be 'true' or None, got {normalize!r}")
    colours = colormap(np.clip(v, 0, 1) ** gamma)
    heat = Image.fromarray(colours.repeat(cell, axis=0).repeat(cell, axis=1))
    if counts:
        _draw_counts(ImageDraw.Draw(heat), m, colours, cell)
    if not labels:
        return np.asarray(heat)
    size = max(6, cell - 2)
    texts = [_label_text(i, classes) for i in range(n)]
    widths = [_text_width(t, size) for t in texts]
    step = math.ceil((max(widths + [0]) + 2) / cell)  # labels wider than a cell: every step-th one
    texts = [t if i % step == 0 else "" for i, t in enumerate(texts)]
    margin = max(widths + [cell]) + 6
    img = Image.new("RGB", (margin + n * cell + 2, margin + n * cell + 2), WHITE)
    img.paste(heat, (margin, margin))
    draw = ImageDraw.Draw(img)
    for i, t in enumerate(texts):
        if t:
            c = margin + i * cell + cell / 2
            _draw_text(draw, (margin - 3, c), t, size, TEXT, "rm")  # true class, left
            _draw_text(draw, (c, margin - 3), t, size, TEXT, "mb")  # predicted class, top
    return np.asarray(img)


def _draw_counts(draw: ImageDraw.ImageDraw, m: np.ndarray, colours: np.ndarray, cell: int) -> None:
    """Each count of ``m`` in the middle of its ``cell``-pixel cell: dark on a bright cell, white on
    a dark one, in the largest size (up to half a cell) at which the widest count fits."""
    widest = f"{m.max():.0f}"
    size = max(6, cell // 2)
    while size > 6 and _text_width(widest, size) > cell - 4:
        size -= 1
    bright = colours @ np.array([0.299, 0.587, 0.114]) > 140
    for (i, j), count in np.ndenumerate(m):
        xy = (j * cell + cell / 2, i * cell + cell / 2)
        _draw_text(draw, xy, f"{count:.0f}", size, TEXT if bright[i, j] else WHITE, "mm")


def gallery(
    images,
    true_labels,
    pred_labels,
    classes: Sequence[str] | None = None,
    ncols: int = 8,
    scale: int = 3,
    max_items: int = 64,
    pad: int = 6,
) -> np.ndarray:
    """Misclassified examples: each image (ink bright, as the network sees it) with a
    "true→pred" caption beneath (predicted in red), in a grid. RGB uint8.

    ``images``: (N, 1, S, S) or (N, S, S) in [0, 1]; labels: class indices.
    """
    x = _to_numpy(images)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"images must be (N, 1, S, S) or (N, S, S), got {tuple(x.shape)}")
    t = [int(v) for v in _to_numpy(true_labels).reshape(-1)]
    p = [int(v) for v in _to_numpy(pred_labels).reshape(-1)]
    k = min(len(x), len(t), len(p), max_items)
    h, w = x.shape[1] * scale, x.shape[2] * scale
    size = max(10, min(20, w // 4))
    cap_h = size + 6
    ncols = max(1, min(ncols, k)) if k else 1
    nrows = max(1, math.ceil(k / ncols))
    img = Image.new("RGB", (pad + ncols * (w + pad), pad + nrows * (h + cap_h + pad)), WHITE)
    draw = ImageDraw.Draw(img)
    for i in range(k):
        r, c = divmod(i, ncols)
        x0, y0 = pad + c * (w + pad), pad + r * (h + cap_h + pad)
        tile = np.round(np.clip(x[i], 0, 1) * 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
        img.paste(Image.fromarray(tile).convert("RGB"), (x0, y0))
        parts = [(_label_text(t[i], classes), TEXT), ("→", MUTED), (_label_text(p[i], classes), WRONG)]
        total = sum(_text_width(s, size) for s, _ in parts)
        cx, cy = x0 + max(0, (w - total) / 2), y0 + h + cap_h / 2
        for s, colour in parts:
            _draw_text(draw, (cx, cy), s, size, colour, "lm")
            cx += _text_width(s, size)
    return np.asarray(img)


def histogram(
    values,
    bins: int = 20,
    value_range: tuple[float, float] = (0.0, 1.0),
    width: int = 480,
    height: int = 240,
    title: str = "",
    xlabel: str = "",
) -> np.ndarray:
    """A histogram of ``values`` as bars (``bins`` equal bins over ``value_range``), RGB uint8.

    The plot area is the image less ``HISTOGRAM_MARGINS``; the tallest bar fills its height
    and the others are proportional (a non-empty bin is at least 1 pixel high). Under the bars:
    the range's ends and middle, and ``xlabel``; above: ``title``; left: 0 and the largest count.
    """
    counts, _ = np.histogram(_to_numpy(values).reshape(-1), bins=bins, range=value_range)
    size = 12
    left, right, top, bottom = HISTOGRAM_MARGINS
    plot_w, plot_h = width - left - right, height - top - bottom
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    peak = max(int(counts.max()), 1)
    bar_w = plot_w / bins
    for i, c in enumerate(counts):
        if c:
            h = max(1, round(plot_h * int(c) / peak))
            x0 = left + round(i * bar_w)
            x1 = left + round((i + 1) * bar_w) - 2  # a 1-pixel gap between bars
            draw.rectangle([x0, top + plot_h - h, x1, top + plot_h - 1], fill=BAR_TOP)
    draw.line([left, top + plot_h, left + plot_w, top + plot_h], fill=MUTED)  # the axis
    lo, hi = value_range
    for frac in (0.0, 0.5, 1.0):
        x = left + frac * plot_w
        _draw_text(draw, (x, top + plot_h + 3), f"{lo + frac * (hi - lo):g}", size, TEXT, "ma")
    if xlabel:
        _draw_text(draw, (left + plot_w / 2, height - 3), xlabel, size, MUTED, "mb")
    _draw_text(draw, (left - 4, top), str(peak), size, TEXT, "ra")
    _draw_text(draw, (left - 4, top + plot_h), "0", size, TEXT, "rb")
    if title:
        _draw_text(draw, (left, 4), title, size, TEXT, "la")
    return np.asarray(img)


def stack_rows(images: Sequence[np.ndarray], pad: int = 6) -> np.ndarray:
    """RGB images one under another, ``pad`` white pixels apart, left-aligned on white."""
    if not images:
        raise ValueError("no images to stack")
    width = max(im.shape[1] for im in images)
    out = np.full((sum(im.shape[0] for im in images) + pad * (len(images) - 1), width, 3), 255, np.uint8)
    y = 0
    for im in images:
        out[y : y + im.shape[0], : im.shape[1]] = im if im.ndim == 3 else im[..., None]
        y += im.shape[0] + pad
    return out


def image_grid(images: Sequence[np.ndarray], ncols: int, pad: int = 10) -> np.ndarray:
    """RGB images in rows of ``ncols``, each top-left in its cell, ``pad`` white pixels apart."""
    if not images:
        raise ValueError("no images to lay out")
    rows = [images[i : i + ncols] for i in range(0, len(images), ncols)]
    cell_w = max(im.shape[1] for im in images)
    lines = []
    for row in rows:
        h = max(im.shape[0] for im in row)
        line = np.full((h, len(row) * cell_w + pad * (len(row) - 1), 3), 255, np.uint8)
        for k, im in enumerate(row):
            x = k * (cell_w + pad)
            line[: im.shape[0], x : x + im.shape[1]] = im if im.ndim == 3 else im[..., None]
        lines.append(line)
    return stack_rows(lines, pad)
