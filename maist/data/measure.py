"""What the training images measure that prediction must match in a user's picture: the width of
their strokes (a checkpoint records it, and pictures' thinner strokes are widened to it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def stroke_widths(images) -> torch.Tensor:
    """Per image, the mean width of its strokes in pixels: ``2 · ink / edge``, the ink mass over
    half the length of its edges (the total variation of the image: the gradient at the corners
    between pixels, the paper around counted as 0). A band of width w and length L ≫ w gives w,
    one pixel wide too; grey (antialiased) edges count by their contrast, so a stroke thinner
    than a pixel reads about one pixel wide. ``images``: (N, H, W) or (N, 1, H, W), ink bright, floats in [0, 1] or
    uint8 (/255). An image without ink gives 0."""
    x = torch.as_tensor(images)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.ndim == 4:
        x = x[:, 0]
    if x.ndim == 2:
        x = x[None]
    p = F.pad(x, (1, 1, 1, 1))  # the gradient at each corner between four pixels a b / c d
    a, b, c, d = p[:, :-1, :-1], p[:, :-1, 1:], p[:, 1:, :-1], p[:, 1:, 1:]
    gx, gy = (b - a + d - c) / 2, (c - a + d - b) / 2
    edge = torch.sqrt(gx * gx + gy * gy).sum((1, 2))
    return torch.where(edge > 0, 2 * x.sum((1, 2)) / edge.clamp_min(1e-12), torch.zeros_like(edge))


def stroke_width(images, max_images: int = 8192, chunk: int = 1024) -> float:
    """The median of :func:`stroke_widths` over ``images``, at most ``max_images`` of them evenly
    spaced, ``chunk`` at a time, those with ink only: what a checkpoint records of its training
    images at the network's input size, as the ``stroke_width`` hparam (0.0 when none has ink).

    ``images``: a tensor (N, 1, S, S) or (N, S, S), float in [0, 1] or uint8 (/255), or a data
    module's part (anything with ``len()`` and ``images(positions)`` returning such a tensor)."""
    n = len(images)
    if n == 0:
        return 0.0
    pick = images.images if callable(getattr(images, "images", None)) else images.__getitem__
    idx = torch.linspace(0, n - 1, min(n, max_images)).round().long().unique()
    w = torch.cat([stroke_widths(pick(part)) for part in idx.split(chunk)])
    w = w[w > 0]
    return float(w.median()) if len(w) else 0.0
