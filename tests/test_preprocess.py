"""Frame and speck handling in the shared preprocessing (the cross-data-set defaults)."""

import torch

from maist.data.preprocess import Preprocess, despeckle, mass_bounds


def blob_with_speck():
    x = torch.zeros(1, 100, 100)
    x[0, 40:60, 30:50] = 1.0  # the character: a 20×20 block
    x[0, 95, 95] = 1.0  # a lone speck in the corner
    return x


def test_despeckle_drops_lone_pixels_and_keeps_strokes():
    out = despeckle(blob_with_speck(), 3)
    assert out[0, 95, 95] == 0
    assert torch.equal(out[0, 40:60, 30:50], torch.ones(20, 20))


def test_mass_bounds_at_zero_is_the_ink_extent_and_trims_a_speck_above_zero():
    x = blob_with_speck()
    assert [int(v) for v in mass_bounds(x.sum(2), 0.0)] == [40, 95]
    assert [int(v) for v in mass_bounds(x.sum(2), 0.01)] == [40, 59]


def test_crop_with_mass_ignores_a_far_speck():
    pre = Preprocess(image_size=28, contrast="none", crop=True, margin=0.0, crop_mass=0.01)
    out = pre(blob_with_speck())[0]
    # the 20×20 block fills the whole frame; with crop_mass=0 the speck would shrink it
    assert out[2:26, 2:26].min() > 0.99
    loose = Preprocess(image_size=28, contrast="none", crop=True, margin=0.0)(blob_with_speck())[0]
    assert (loose > 0.5).float().mean() < 0.2
