"""BatchAffine: identity when off, one transform per sample, the geometry it promises."""

from __future__ import annotations

import math

import pytest
import torch

from maist.augment import BatchAffine, affine_matrices, warp


def batch(n=8, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    x[:, :, 8:20, 10:14] = torch.rand(n, 1, 12, 4, generator=g)
    x[:, :, 12:15, 6:22] = 1.0
    return x


def test_zero_magnitude_is_identity():
    x = batch()
    aug = BatchAffine().train()
    assert torch.equal(aug(x), x)
    # the geometric path with an identity transform (forced) reproduces the input too
    n = len(x)
    z = torch.zeros(n)
    theta = affine_matrices(z, torch.ones(n), z, z, z, z)
    assert torch.allclose(theta, torch.eye(2, 3).expand(n, 2, 3), atol=1e-7)
    assert torch.allclose(warp(x, theta), x, atol=1e-6)
    # ranges that collapse to a point also give the identity
    aug = BatchAffine(rotate=0, scale=[1.0, 1.0], shear=0, translate=0, stroke=0, gamma=1, contrast=1).train()
    assert torch.allclose(aug(x), x, atol=1e-6)


def test_eval_mode_passes_through():
    x = batch()
    aug = BatchAffine(
        rotate=15, scale=[0.8, 1.2], shear=10, translate=0.1, elastic=1.0, stroke=0.5, gamma=1.5, contrast=0.6
    ).eval()
    assert aug(x) is x


def test_per_sample_parameters_differ():
    x = batch(n=1).repeat(16, 1, 1, 1)  # 16 copies of one image
    aug = BatchAffine(rotate=15, scale=[0.85, 1.15], shear=10, translate=0.1).train()
    out = aug(x, generator=torch.Generator().manual_seed(1))
    flat = out.flatten(1)
    dists = torch.cdist(flat, flat)
    off_diag = dists[~torch.eye(16, dtype=torch.bool)]
    assert off_diag.min() > 1e-3, "two samples got the same transform"
    theta = aug.sample_theta(16, 28, x, torch.Generator().manual_seed(2))
    assert len(torch.unique(theta[:, 0, 0])) == 16


def test_stroke_gamma_contrast_per_sample():
    x = batch(n=1).repeat(12, 1, 1, 1)
    for kw in ({"stroke": 0.8}, {"gamma": 2.0}, {"contrast": 0.5}):
        out = BatchAffine(**kw).train()(x, generator=torch.Generator().manual_seed(3))
        sums = out.flatten(1).sum(1)
        assert len(torch.unique(sums)) > 6, kw


@pytest.mark.parametrize("dx,dy", [(3, 0), (0, -2), (4, 5)])
def test_translation_moves_a_dot(dx, dy):
    size = 28
    x = torch.zeros(1, 1, size, size)
    x[0, 0, 10, 12] = 1.0  # row 10, column 12
    px = 2.0 / size  # one pixel in normalised units
    one = torch.ones(1)
    theta = affine_matrices(0 * one, one, 0 * one, 0 * one, dx * px * one, dy * px * one)
    out = warp(x, theta)
    r, c = divmod(int(out.flatten().argmax()), size)
    assert (r, c) == (10 + dy, 12 + dx)
    assert out.max() == pytest.approx(1.0, abs=1e-5)


def test_translate_fraction_bounds_the_shift():
    size = 32
    x = torch.zeros(64, 1, size, size)
    x[:, 0, 16, 16] = 1.0
    out = BatchAffine(translate=0.125).train()(x, generator=torch.Generator().manual_seed(0))
    # centre of mass moves by at most 0.125 * 32 = 4 pixels in each direction, and it does move
    ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    m = out[:, 0].sum((1, 2))
    cy, cx = (out[:, 0] * ys).sum((1, 2)) / m, (out[:, 0] * xs).sum((1, 2)) / m
    assert (cx - 16).abs().max() <= 4.0 + 1e-4 and (cy - 16).abs().max() <= 4.0 + 1e-4
    assert (cx - 16).abs().max() > 2.0


def test_rotation_by_90_degrees():
    size = 28
    x = torch.zeros(1, 1, size, size)
    x[0, 0, 14, 20] = 1.0  # right of the image centre (13.5, 13.5)
    one = torch.ones(1)
    theta = affine_matrices(math.pi / 2 * one, one, 0 * one, 0 * one, 0 * one, 0 * one)
    out = warp(x, theta)
    r, c = divmod(int(out.flatten().argmax()), size)
    # counter-clockwise on screen: a point right of the centre goes above it
    assert c in (13, 14) and r < 10


def test_shape_dtype_range_preserved():
    x = batch(n=10, size=32)
    aug = BatchAffine(
        rotate=20, scale=[0.7, 1.3], shear=15, translate=0.15, elastic=1.5, stroke=0.7, gamma=2.0, contrast=0.5, p=0.8
    ).train()
    out = aug(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.isfinite(out).all()
    xd = x.double()
    assert aug(xd).dtype == torch.float64


def test_probability_zero_keeps_every_sample():
    x = batch()
    out = BatchAffine(rotate=20, translate=0.1, stroke=0.5, p=0.0).train()(x)
    assert torch.allclose(out, x)


def test_hydra_instantiate_with_list_scale():
    from hydra.utils import instantiate

    aug = instantiate({"_target_": "maist.augment.BatchAffine", "rotate": 10, "scale": [0.9, 1.1]})
    assert aug.scale == (0.9, 1.1)
