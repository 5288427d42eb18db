"""Test-time augmentation: a network read through a few fixed views of each image.

``TestTimeAugmented`` wraps any network. In training mode it is the network itself. In eval mode
(validation, test, prediction, the web page) it feeds the network each configured view of the
batch (a rotation, a scale and a stroke weight, with :mod:`maist.augment`'s geometry) and
returns the log of the mean of the views' probabilities: ``argmax`` is the averaged vote,
``softmax`` gives the averaged probabilities back.

Hydra (an experiment yaml; every key but ``views`` and ``inner`` is the inner network's, so it
merges over ``model=modern``'s net)::

    model:
      net:
        _target_: maist.models.TestTimeAugmented
        inner: ModernCNN
        views: [{}, {rotate: 6}, {rotate: -6}, {scale: 1.08}, {scale: 0.92}]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maist import checks
from maist.augment import affine_matrices
from maist.errors import ConfigError
from maist.morphology import dilate, erode

VIEW_KEYS = ("rotate", "scale", "stroke")


def check_view(view: Mapping) -> dict[str, float]:
    """One view's settings with their defaults (the identity); unknown keys and a scale ≤ 0 fail."""
    if not isinstance(view, Mapping) or set(view) - set(VIEW_KEYS):
        raise ConfigError(f"model.net.views: {view!r} is not a view: a mapping of {', '.join(VIEW_KEYS)} (or {{}})")
    name = "model.net.views"
    v = {"rotate": 0.0, "scale": 1.0, "stroke": 0.0}
    v.update({k: checks.number(f"{name}.{k}", x) for k, x in view.items()})
    checks.positive(f"{name}.scale", v["scale"])
    checks.number(f"{name}.stroke", v["stroke"], -1.0, 1.0)
    return v


def view_grid(size: int, rotate: float = 0.0, scale: float = 1.0) -> torch.Tensor | None:
    """The (1, size, size, 2) sampling grid that rotates the content by ``rotate`` degrees
    (counter-clockwise) and scales it by ``scale`` about the centre; ``None`` for the identity."""
    if not rotate and scale == 1.0:
        return None
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    theta = affine_matrices(one(math.radians(rotate)), one(scale), one(0), one(0), one(0), one(0))
    return F.affine_grid(theta, [1, 1, size, size], align_corners=False)


def apply_view(
    x: torch.Tensor, rotate: float = 0.0, scale: float = 1.0, stroke: float = 0.0, grid: torch.Tensor | None = None
) -> torch.Tensor:
    """The same transform for the whole (N, 1, S, S) batch: rotate by ``rotate`` degrees
    (counter-clockwise), scale the content by ``scale`` about the centre (or resample through a
    precomputed ``grid`` of :func:`view_grid`), then blend by ``stroke`` towards the 3×3 dilation
    (> 0, bolder) or erosion (< 0, thinner). The identity returns ``x``."""
    out = x
    if grid is None and (rotate or scale != 1.0):
        grid = view_grid(x.shape[-1], rotate, scale)
    if grid is not None:
        grid = grid.to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if stroke > 0:
        out = out + stroke * (dilate(out) - out)
    elif stroke < 0:
        out = out - stroke * (erode(out) - out)
    return out if out is x else out.clamp(0.0, 1.0)


class TestTimeAugmented(nn.Module):
    """A network that, in eval mode, averages its probabilities over fixed views of the input.

    Args:
        views: one mapping per view with any of ``rotate`` (degrees), ``scale`` (content scale
            factor) and ``stroke`` (blend towards dilation > 0 or erosion < 0); ``{}`` is the
            image as it is. Each view costs one forward pass at evaluation.
        inner: the class of the network, by its name in :mod:`maist.models` (``ModernCNN``,
            ``ModernEnsemble``, …).
        **net: the inner network's own arguments.
    """

    __test__ = False  # a network, not a pytest test class

    def __init__(self, views: Sequence[Mapping] = ({},), inner: str = "ModernCNN", **net):
        super().__init__()
        from maist.models import NETS  # the package imports this module

        if not views:
            raise ConfigError("model.net.views=[]: needs at least one view ({} is the image as it is)")
        inner_nets = [name for name, cls in NETS.items() if cls is not TestTimeAugmented]
        cls = NETS[checks.choice("model.net.inner", inner, inner_nets)]
        self.net = cls(**net)
        self.views = [check_view(v) for v in views]
        # the sampling grids at the network's input size, made once (and a constant in an ONNX graph)
        self.size = int(net.get("image_size", 28))
        self._grids = [view_grid(self.size, v["rotate"], v["scale"]) for v in self.views]

    def extra_repr(self) -> str:
        return f"views={self.views}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.net(x)
        grids = self._grids if x.shape[-1] == self.size else [None] * len(self.views)
        views = [apply_view(x, **v, grid=g) for v, g in zip(self.views, grids)]
        probs = torch.stack([self.net(view).softmax(-1) for view in views]).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
