"""Batch augmentation on the training tensor: one random transform per sample, all at once.

``BatchAffine`` takes the (N, 1, S, S) batch (ink bright on a dark background, values in
[0, 1]) that ``MaistModule.training_step`` feeds the network and returns a batch of the same
shape, dtype and range. Each sample gets its own

- affine transform: rotation, isotropic scale, shear, translation (``F.affine_grid`` +
  ``F.grid_sample``, one call for the whole batch), optionally with a smooth elastic
  displacement added to the sampling grid;
- stroke weight: a blend towards the 3×3 dilation (bolder) or erosion (thinner) of the image,
  by a random amount in [-stroke, stroke];
- ink level: gamma ``x ** g`` with log g uniform in [-log gamma, log gamma], and a gain in
  [contrast, 1] (lighter strokes).

Every magnitude is a config value; 0 (or a [1, 1] range) turns that part off and skips its
work. In eval mode (``module.eval()``) the batch passes unchanged.

Hydra: ``model.augment: {_target_: maist.augment.BatchAffine, rotate: 12, scale: [0.85, 1.1], ...}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maist import checks
from maist.morphology import dilate, erode  # 3×3 grey dilation and erosion (stroke weight)


def affine_matrices(angle, scale, shear_x, shear_y, tx, ty) -> torch.Tensor:
    """(N, 2, 3) ``theta`` for ``F.affine_grid`` (align_corners=False) that moves the
    *content* of each image: rotate by ``angle`` (radians, counter-clockwise on screen),
    scale by ``scale``, shear by ``shear_x``/``shear_y`` (radians), then translate by
    ``tx``, ``ty`` in normalised units (2.0 = the image's full width; +x right, +y down).

    affine_grid maps output coordinates to input ones, so theta is the inverse of the
    forward content transform ``p_out = A p_in + t``: ``p_in = A⁻¹ (p_out - t)``.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    # screen coordinates have y downwards: a counter-clockwise turn on screen is R(-angle)
    r = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    sh = torch.stack(
        [
            torch.stack([torch.ones_like(shear_x), torch.tan(shear_x)], -1),
            torch.stack([torch.tan(shear_y), torch.ones_like(shear_y)], -1),
        ],
        -2,
    )
    a = r @ sh * scale[:, None, None]
    a_inv = torch.linalg.inv(a)
    t = torch.stack([tx, ty], -1)[:, :, None]
    return torch.cat([a_inv, -a_inv @ t], dim=2)


def warp(x: torch.Tensor, theta: torch.Tensor, displacement: torch.Tensor | None = None) -> torch.Tensor:
    """Resample (N, C, H, W) through (N, 2, 3) ``theta`` (+ an optional (N, H, W, 2) grid
    displacement in normalised units); outside the image reads as 0 (background)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    if displacement is not None:
        grid = grid + displacement
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class BatchAffine(nn.Module):
    """Per-sample random affine (+ optional elastic, stroke weight, ink level) for a batch.

    Args:
        rotate: max rotation in degrees (uniform in [-rotate, rotate]).
        scale: [lo, hi] isotropic scale factor (uniform in log space); [1, 1] = off.
        shear: max shear in degrees, drawn separately along x and y.
        translate: max shift as a fraction of the image side, separately in x and y.
        elastic: displacement amplitude in pixels of a smooth random field (0 = off);
            ``elastic_grid`` control points per side set its smoothness.
        stroke: max blend towards dilation (> 0) or erosion (< 0): a value w in
            [-stroke, stroke] gives x + w⁺·(dilate(x) - x) + w⁻·(erode(x) - x). 0 = off.
        gamma: max ink gamma factor (≥ 1): x ** g, log g uniform in ±log(gamma). 1 = off.
        contrast: lowest ink gain: x * c, c uniform in [contrast, 1]. 1 = off.
        p: probability that a sample is transformed at all (the others pass unchanged).
    """

    def __init__(
        self,
        rotate: float = 0.0,
        scale: Sequence[float] | float = (1.0, 1.0),
        shear: float = 0.0,
        translate: float = 0.0,
        elastic: float = 0.0,
        elastic_grid: int = 4,
        stroke: float = 0.0,
        gamma: float = 1.0,
        contrast: float = 1.0,
        p: float = 1.0,
    ):
        super().__init__()
        name = "model.augment."
        self.rotate = checks.number(name + "rotate", rotate, 0.0, 180.0)
        if isinstance(scale, (int, float)):  # one factor s: the range [1/s, s]
            s = checks.number(name + "scale", scale, 1.0)
            self.scale = (1 / s, s)
        else:
            self.scale = checks.interval(name + "scale", scale)
        self.shear = checks.number(name + "shear", shear, 0.0, 90.0, high_open=True)
        self.translate = checks.fraction(name + "translate", translate)
        self.elastic = checks.number(name + "elastic", elastic, 0.0)
        self.elastic_grid = checks.whole(name + "elastic_grid", elastic_grid, 2)
        self.stroke = checks.fraction(name + "stroke", stroke, high_open=False)
        self.gamma = checks.number(name + "gamma", gamma, 1.0)
        self.contrast = checks.probability(name + "contrast", contrast)
        self.p = checks.fraction(name + "p", p, high_open=False)

    @property
    def geometric(self) -> bool:
        return bool(self.rotate or self.shear or self.translate or self.scale != (1.0, 1.0))

    def extra_repr(self) -> str:
        return (
            f"rotate={self.rotate}, scale={self.scale}, shear={self.shear}, translate={self.translate}, "
            f"elastic={self.elastic}, stroke={self.stroke}, gamma={self.gamma}, contrast={self.contrast}, "
            f"p={self.p}"
        )

    def _uniform(self, n: int, lo: float, hi: float, like: torch.Tensor, generator=None) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=like.device, dtype=torch.float32) * (hi - lo) + lo

    def sample_theta(self, n: int, size: int, like: torch.Tensor, generator=None) -> torch.Tensor:
        u = lambda lo, hi: self._uniform(n, lo, hi, like, generator)  # noqa: E731
        rot, shr = math.radians(self.rotate), math.radians(self.shear)
        lo, hi = math.log(self.scale[0]), math.log(self.scale[1])
        return affine_matrices(
            u(-rot, rot),
            torch.exp(u(lo, hi)),
            u(-shr, shr),
            u(-shr, shr),
            u(-2 * self.translate, 2 * self.translate),
            u(-2 * self.translate, 2 * self.translate),
        )

    def sample_displacement(self, n: int, size: int, like: torch.Tensor, generator=None) -> torch.Tensor:
        k = max(2, self.elastic_grid)
        coarse = torch.randn(n, 2, k, k, generator=generator, device=like.device, dtype=torch.float32)
        field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
        return (field * (2.0 * self.elastic / size)).permute(0, 2, 3, 1)  # pixels → normalised units

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training:
            return x
        n, size = x.shape[0], x.shape[-1]
        out = x
        if self.geometric or self.elastic:
            theta = (
                self.sample_theta(n, size, x, generator)
                if self.geometric
                else torch.eye(2, 3, device=x.device).expand(n, 2, 3)
            )
            disp = self.sample_displacement(n, size, x, generator) if self.elastic else None
            out = warp(x, theta, disp)
        if self.stroke:
            w = self._uniform(n, -self.stroke, self.stroke, x, generator).to(x.dtype)[:, None, None, None]
            out = out + w.clamp(min=0) * (dilate(out) - out) + (-w).clamp(min=0) * (erode(out) - out)
        if self.gamma != 1.0:
            g = torch.exp(self._uniform(n, -math.log(self.gamma), math.log(self.gamma), x, generator))
            out = out.clamp(min=0).pow(g.to(x.dtype)[:, None, None, None])
        if self.contrast != 1.0:
            out = out * self._uniform(n, self.contrast, 1.0, x, generator).to(x.dtype)[:, None, None, None]
        if self.p < 1.0:
            keep = self._uniform(n, 0.0, 1.0, x, generator) >= self.p
            out = torch.where(keep[:, None, None, None], x, out)
        return out.clamp(0.0, 1.0) if out is not x else x
