"""Frame and speck handling in the shared preprocessing (the cross-data-set defaults)."""

import torch

from maist.data.preprocess import INK_LEVEL, INK_TRIM, despeckle, ink_box, mass_bounds
from tests.helpers import plain_preprocess


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
    pre = plain_preprocess(image_size=28, contrast="none", crop=True, margin=0.0, crop_mass=0.01)
    out = pre(blob_with_speck())[0]
    # the 20×20 block fills the whole frame; with crop_mass=0 the speck would shrink it
    assert out[2:26, 2:26].min() > 0.99
    loose = plain_preprocess(image_size=28, contrast="none", crop=True, margin=0.0)(blob_with_speck())[0]
    assert (loose > 0.5).float().mean() < 0.2


def test_ink_box_exact_pixels():
    x = torch.zeros(3, 20, 30)
    x[0, 4:9, 10:22] = 1.0  # a 5 × 12 block
    x[1] = x[0]
    x[1, 2, 3:25] = INK_LEVEL  # a faint line at the level: not ink
    x[1, 15, 27] = 0.9  # a stray pixel: 0.9 of 60.9 is 1.5% of the ink mass
    # image 2 has no ink: a one-pixel box at the last row and column
    assert [v.tolist() for v in ink_box(x, trim=0.0)] == [[4, 4, 19], [8, 15, 19], [10, 10, 29], [21, 27, 29]]
    assert [v.tolist() for v in ink_box(x, trim=0.02)] == [[4, 4, 19], [8, 8, 19], [10, 10, 29], [21, 21, 29]]
    assert [v.tolist() for v in ink_box(x, trim=0.0, level=0.0)][0] == [4, 2, 19]  # every value counts
    assert INK_TRIM < 0.015  # the default trim keeps a pixel of 1.5% of the ink


def test_the_training_crop_is_the_ink_box_at_its_settings():
    """One definition: the crop box is ink_box at the config's crop_mass, of the thresholded image."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 40, 36, generator=g) ** 4
    pre = plain_preprocess(image_size=28, crop=True, crop_mass=0.01, threshold=0.35, despeckle=3)
    thresholded = torch.where(x < 0.35, torch.zeros_like(x), x)
    for mine, theirs in zip(pre.crop_boxes(thresholded), ink_box(thresholded, 0.01, level=0.0)):
        assert torch.equal(mine, theirs)
