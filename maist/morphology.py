"""Morphology on batches of images (..., H, W): the project's one implementation.

A grey image (float) takes the largest (dilation) or smallest (erosion) value over a footprint
around each pixel; a mask (bool) or a bit-packed mask (uint8 from :func:`pack`: eight images a byte)
takes the OR or the AND. A footprint is symmetric about its centre and held as the half-width of
each of its rows (:func:`square`, :func:`disk`), so an extreme over it is the extremes of a few
shifted rows. Outside the image reads as ``fill``, by default a value that never wins (outside is
ignored).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Footprint = tuple[int, ...]  # the half-width of each row, from the top row (dy = -reach) down


def square(radius: int) -> Footprint:
    """The (2 radius + 1)² square."""
    return (radius,) * (2 * radius + 1)


def disk(radius: float, slack: float = 0.0) -> Footprint:
    """The offsets (dy, dx) with dy² + dx² ≤ radius² + ``slack``."""
    bound = radius * radius + slack
    reach = math.isqrt(math.floor(bound))
    return tuple(math.isqrt(math.floor(bound - dy * dy)) for dy in range(-reach, reach + 1))


SQUARE3 = square(1)


def dilate(x: torch.Tensor, footprint: Footprint = SQUARE3, fill: float | bool | None = None) -> torch.Tensor:
    """The largest value (OR of a mask) over ``footprint`` around each pixel of ``x`` (..., H, W)."""
    return _extreme(x, footprint, True, fill)


def erode(x: torch.Tensor, footprint: Footprint = SQUARE3, fill: float | bool | None = None) -> torch.Tensor:
    """The smallest value (AND of a mask) over ``footprint`` around each pixel of ``x`` (..., H, W)."""
    return _extreme(x, footprint, False, fill)


def _extreme(x: torch.Tensor, footprint: Footprint, largest: bool, fill) -> torch.Tensor:
    reach, widest = len(footprint) // 2, max(footprint)
    if fill is not None:  # outside reads as fill: pad with it (what lies beyond is ignored)
        h, w = x.shape[-2:]
        padded = x.new_full((*x.shape[:-2], h + 2 * reach, w + 2 * widest), fill)
        padded[..., reach : reach + h, widest : widest + w] = x
        return _extreme(padded, footprint, largest, None)[..., reach : reach + h, widest : widest + w]
    if x.is_floating_point():
        if footprint == square(reach):  # max pooling: the same values, and one ONNX op (exported TTA views)
            flat = x.reshape(-1, 1, *x.shape[-2:])
            k = len(footprint)
            out = F.max_pool2d(flat, k, 1, reach) if largest else -F.max_pool2d(-flat, k, 1, reach)
            return out.reshape(x.shape)
        op = torch.maximum if largest else torch.minimum
    else:
        op = torch.bitwise_or if largest else torch.bitwise_and
    runs = [x]  # runs[k]: the extreme over dx in [-k, k]
    for k in range(1, widest + 1):
        run = runs[-1].clone()
        op(run[..., k:], x[..., :-k], out=run[..., k:])
        op(run[..., :-k], x[..., k:], out=run[..., :-k])
        runs.append(run)
    out = runs[footprint[reach]].clone()
    for dy in range(1, reach + 1):
        op(out[..., :-dy, :], runs[footprint[reach + dy]][..., dy:, :], out=out[..., :-dy, :])
        op(out[..., dy:, :], runs[footprint[reach - dy]][..., :-dy, :], out=out[..., dy:, :])
    return out


def grow_within(seed: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """The pixels of ``mask`` reachable from ``seed`` (a part of it) in at most ``steps``
    8-connected steps through ``mask`` (bool masks, or both bit-packed)."""
    for _ in range(steps):
        grown = dilate(seed) & mask
        if torch.equal(grown, seed):
            break
        seed = grown
    return seed


def label_components(mask: torch.Tensor, max_iter: int | None = None) -> torch.Tensor:
    """(N, H, W) bool → float labels of its 8-connected components, 0 on the background: each
    component carries the largest of its pixels' running numbers (so labels are unique across the
    batch), spread by repeated 3×3 dilation until nothing changes or ``max_iter`` rounds."""
    labels = torch.arange(1, mask.numel() + 1, dtype=torch.float32).reshape(mask.shape) * mask
    for _ in range(max_iter or mask.numel()):
        grown = dilate(labels) * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels


def pack(mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(N, ...) bool → (⌈N/8⌉, ...) uint8 whose plane i holds image ``j·⌈N/8⌉ + i`` in bit j: binary
    morphology on eight images at once (images past N: unset). CPU only, as are :func:`unpack` and
    :func:`or_along`."""
    mask = np.asarray(mask)
    planes = -(-len(mask) // 8)
    bits = mask.view(np.uint8)
    if len(mask) != 8 * planes:
        bits = np.zeros((8 * planes, *mask.shape[1:]), dtype=np.uint8)
        bits[: len(mask)] = mask
    bits = bits.reshape(8, planes, *mask.shape[1:])
    out = bits[0].copy()
    for j in range(1, 8):
        out |= bits[j] << j
    return torch.from_numpy(out)


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """:func:`pack`'s inverse: (⌈n/8⌉, ...) uint8 → (n, ...) bool."""
    shifts = np.arange(8, dtype=np.uint8).reshape(8, *[1] * packed.ndim)
    bits = (packed.numpy()[None] >> shifts) & 1
    return torch.from_numpy(bits.reshape(-1, *packed.shape[1:])[:n].view(bool))


def or_along(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """The OR of a bit-packed mask along ``dim`` (for each image: is any pixel set there)."""
    return torch.from_numpy(np.bitwise_or.reduce(packed.numpy(), axis=dim))


def crowded(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Where at least ``k`` of a pixel's 8 neighbours are set (bool or bit-packed masks; outside
    the image: unset). The neighbours are summed by bitwise adders, so the eight images of a packed
    byte count at once."""
    h, w = mask.shape[-2:]
    p = mask.new_zeros((*mask.shape[:-2], h + 2, w + 2))
    p[..., 1:-1, 1:-1] = mask
    left, centre, right = p[..., :-2], p[..., 1:-1], p[..., 2:]
    beside = [left ^ right, left & right]  # left + right as bit planes, least significant first
    three = [beside[0] ^ centre, beside[1] | (beside[0] & centre)]  # left + centre + right
    count = _add(
        _add([b[..., :-2, :] for b in three], [b[..., 2:, :] for b in three]), [b[..., 1:-1, :] for b in beside]
    )
    return _at_least(count, k)


def _add(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    """The sum of two numbers held as bit planes, least significant first (``a`` the longer)."""
    out, carry = [], None
    for i, x in enumerate(a):
        terms = [t for t in (x, b[i] if i < len(b) else None, carry) if t is not None]
        total, carry = terms[0], None
        for t in terms[1:]:
            carry = (total & t) if carry is None else carry | (total & t)
            total = total ^ t
        out.append(total)
    return out if carry is None else [*out, carry]


def _at_least(bits: list[torch.Tensor], k: int) -> torch.Tensor:
    """Where the number held as bit planes ``bits`` (least significant first) is at least ``k``."""
    if k >= 1 << len(bits):
        return torch.zeros_like(bits[0])
    out = None  # everywhere: any number is at least 0
    for i, b in enumerate(bits):
        if k >> i & 1:
            out = b if out is None else b & out
        elif out is not None:
            out = b | out
    return ~torch.zeros_like(bits[0]) if out is None else out
