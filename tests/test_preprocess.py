"""Frame and speck handling in the shared preprocessing (the cross-data-set defaults), the block
path against the per-image one, and the morphology they use."""

import dataclasses
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.bench_preprocess import OldPreprocess, differences
from maist.data.dataset import to_uint8
from maist.data.etl import read_etl
from maist.data.preprocess import (
    BEFORE_KEYS,
    INK_LEVEL,
    INK_TRIM,
    Preprocess,
    despeckle,
    etl_levels_to_float,
    ink_box,
    level_contrast,
    mass_bounds,
)
from maist.data.sample import SAMPLE_ZIP
from maist.morphology import crowded, dilate, disk, erode, grow_within, pack, square, unpack
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


# ------------------------------------------------ the block path against the per-image one
# ``benchmarks.bench_preprocess.OldPreprocess`` is the per-image computation the block path
# replaced, kept there for this comparison. The tolerance (the module doc's): the same crop, and
# values within a few 1e-7 (the same sums in another order), so a stored pixel is at most 1 off,
# on a small share of pixels (measured: ~1e-5 on real records, 4e-4 on flat generated rectangles).

FLOAT_TOLERANCE = 1e-6
STORED_SHARE = 1e-3  # of stored pixels that may be 1 off


def assert_as_before(pre, levels: np.ndarray, max_level: int):
    """``pre.stored`` and ``pre(...)`` against the per-image path, on ``levels`` (without the
    steps that came after that path, ``crop_border`` and hysteresis: their own tests are below)."""
    pre = dataclasses.replace(pre, **BEFORE_KEYS)
    old = OldPreprocess(**{k: v for k, v in pre.as_dict().items() if k not in BEFORE_KEYS})
    x = torch.from_numpy(etl_levels_to_float(levels, max_level))
    before = old(x)
    floats = pre(x)
    assert floats.shape == before.shape and float((floats - before).abs().max()) <= FLOAT_TOLERANCE
    stored = pre.stored(levels, max_level)
    assert np.array_equal(stored, to_uint8(floats))  # histogram statistics = median and quantile
    worst, share = differences(stored, to_uint8(before))
    assert worst <= 1 and share <= STORED_SHARE, (worst, share)


@pytest.mark.parametrize("percentile", [99.0, 95.0, 50.0, 100.0])
def test_the_level_statistics_are_torch_median_and_quantile(percentile):
    """Read off each image's level histogram, bit for bit; half the images hold two adjacent levels
    split at a random count, so the percentile often falls between them (where it interpolates)."""
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 16, (200, 63, 64), generator=g, dtype=torch.uint8)
    for i in range(0, 200, 2):
        split = torch.arange(63 * 64) < torch.randint(0, 63 * 64, (1,), generator=g)
        levels[i] = (split[torch.randperm(63 * 64, generator=g)] + i % 15).view(63, 64)
    x = torch.from_numpy(etl_levels_to_float(levels.numpy(), 15)).flatten(1)
    values = torch.from_numpy(etl_levels_to_float(np.arange(16), 15))
    background, ink = level_contrast(levels, values, percentile)
    assert torch.equal(background, x.median(1).values)
    assert torch.equal(ink, torch.quantile(x, percentile / 100, dim=1))


@cache
def sample_levels() -> np.ndarray:
    return read_etl(SAMPLE_ZIP).images[::15]  # 300 records of 60 writers


@pytest.mark.parametrize("size", [28, 64])
def test_the_block_path_is_the_per_image_path_on_the_shipped_sample(size):
    assert_as_before(Preprocess(image_size=size), sample_levels(), 15)


@pytest.mark.parametrize(
    "steps",
    [
        {"contrast": "none", "threshold": 0.0, "despeckle": 0, "crop": False},
        {"despeckle": 0, "crop_connect": 0.0},
        {"crop_mass": 0.0, "despeckle": 6, "margin": 0.0},
        {"threshold": 0.6, "crop_bridge": 0.0, "margin": 0.3, "image_size": 40},
    ],
)
def test_the_block_path_is_the_per_image_path_at_other_settings(steps):
    assert_as_before(Preprocess(**steps), sample_levels()[:120], 15)


def test_the_block_path_on_binary_records():
    """ETL8B2/ETL9B-like records: 64 × 63, levels 0/1 (max_level 1)."""
    x = torch.from_numpy(sample_levels()[:200]).float()[:, None]
    binary = (F.interpolate(x, size=(63, 64), mode="area")[:, 0] > 6).numpy().astype(np.uint8)
    assert_as_before(Preprocess(image_size=28), binary, 1)
    assert_as_before(Preprocess(image_size=64), binary, 1)


def test_the_block_path_on_blank_full_and_border_images():
    levels = np.zeros((11, 127, 128), np.uint8)
    levels[1] = 15  # ink everywhere
    levels[2, :, :9] = 12  # ink along the left edge
    levels[3, -5:, :] = 9  # … the bottom edge
    levels[4, :40, -30:] = 15  # a block in the top right corner
    levels[5, 60, 64] = 15  # one pixel (despeckle drops it: blank again)
    levels[6, 20:110, 30:33] = 15  # a stroke touching nothing
    levels[6, 0:3, 120:128] = 15  # and a mark in the corner, apart
    levels[7] = np.random.default_rng(0).integers(0, 2, (127, 128))  # noise only
    levels[8, 10:120, 10:120] = 7  # one grey level over paper
    levels[9] = np.maximum(levels[4], 1)  # paper at level 1
    levels[10, 50:60, 0:128] = 15  # a bar from edge to edge
    for size in (28, 64, 128):
        assert_as_before(Preprocess(image_size=size), levels, 15)
    assert not Preprocess().stored(levels[:1], 15).any()


def test_blocks_are_independent():
    """``stored`` goes BLOCK records at a time: cut anywhere (also off the eight images a byte of the
    packed masks), the result is the same."""
    levels = sample_levels()
    whole = Preprocess().stored(levels, 15)
    parts = [Preprocess().stored(levels[a:b], 15) for a, b in ((0, 7), (7, 140), (140, 141), (141, len(levels)))]
    assert np.array_equal(whole, np.concatenate(parts))


def test_stored_refuses_levels_above_max_level():
    with pytest.raises(ValueError, match="max_level=1"):
        Preprocess().stored(np.full((2, 10, 10), 3, np.uint8), 1)


@pytest.mark.parametrize("name", ["etl8g-71", "etl4c-46", "etl8b2-46"])
def test_the_block_path_is_the_per_image_path_on_real_handwriting(etl_dev, name):
    records = read_etl(etl_dev / name)
    levels = records.images[:: max(1, len(records.images) // 300)]
    for size in (28, 64):
        assert_as_before(Preprocess(image_size=size), levels, records.max_level)


# ---------------------------------------------------------------------------- morphology


def test_square_and_disk_footprints():
    assert square(1) == (1, 1, 1)
    assert disk(1) == (0, 1, 0)  # the 4-neighbourhood
    assert disk(2, slack=2) == (1, 2, 2, 2, 1)  # dy² + dx² ≤ 6
    assert disk(0.5) == (0,)


def test_dilation_by_a_square_is_repeated_3x3_dilation_and_packing_changes_nothing():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(13, 30, 31, generator=g) > 0.93
    step = mask
    for _ in range(3):
        step = dilate(step)
    assert torch.equal(dilate(mask, square(3)), step)
    packed = pack(mask)
    assert packed.shape == (2, 30, 31) and torch.equal(unpack(packed, 13), mask)
    assert torch.equal(unpack(dilate(packed, square(3)), 13), step)
    grey = torch.rand(2, 30, 31, generator=g)
    assert torch.equal(dilate(grey), F.max_pool2d(grey[:, None], 3, 1, 1)[:, 0])
    assert torch.equal(erode(grey, disk(2), fill=1.0), -dilate(-grey, disk(2), fill=-1.0))


def test_crowded_counts_the_8_neighbours():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(16, 25, 27, generator=g) > 0.5
    count = F.conv2d(mask[:, None].float(), torch.ones(1, 1, 3, 3), padding=1)[:, 0] - mask.float()
    for k in range(10):
        assert torch.equal(crowded(mask, k), count >= k)
        assert torch.equal(unpack(crowded(pack(mask), k), 16), count >= k)


def test_grow_within_takes_the_given_steps_through_the_mask():
    mask = torch.zeros(1, 5, 12, dtype=torch.bool)
    mask[0, 2, :] = True  # a line
    seed = torch.zeros_like(mask)
    seed[0, 2, 0] = True
    assert int(grow_within(seed, mask, 4).sum()) == 5
    assert int(grow_within(seed, mask, 100).sum()) == 12


def _character() -> np.ndarray:
    """A stroke figure in the middle of an ETL8G frame (levels): a box outline and a diagonal."""
    levels = np.zeros((127, 128), np.uint8)
    levels[30:34, 30:100] = 15
    levels[30:95, 30:34] = 15
    for i in range(60):
        levels[35 + i, 40 + i : 44 + i] = 13
    return levels


def test_a_smudge_at_the_edge_is_left_out_of_the_box():
    """ETL8G scans with a smudge or a neighbour's stroke along the top or bottom edge: with
    ``crop_border`` the character alone is framed, exactly as if the smudge were not there."""
    alone = _character()
    smudged = alone.copy()
    smudged[0:4, 10:110] = 11  # along the top edge, apart from the character
    smudged[124:127, 40:70] = 9  # and the bottom edge
    border, no_band = Preprocess(crop_border=0.05), Preprocess(crop_border=0.0)
    stored = border.stored(np.stack([alone, smudged]), 15)
    assert np.array_equal(stored[0], stored[1])
    assert np.array_equal(stored[0], no_band.stored(alone[None], 15)[0])  # no smudge: as without the band
    assert not np.array_equal(no_band.stored(smudged[None], 15)[0], stored[0])  # without it, the smudge is framed


def test_ink_connected_to_the_character_brings_the_box_into_the_band():
    """A stroke of the character that runs into the band is part of the box: it grows back over it."""
    levels = _character()
    levels[3:30, 60:64] = 15  # from the top edge down to the character's top bar
    x = torch.from_numpy(levels[None] / 15.0).float()
    boxes = [int(b) for b in Preprocess(crop_border=0.05).crop_boxes(x)]
    assert boxes[0] == 3  # the top of the stroke, 3 rows inside the 6-row band
    assert boxes == [int(b) for b in Preprocess(crop_border=0.0).crop_boxes(x)]  # the same box as with no band


def test_ink_only_in_the_band_is_boxed_as_without_it():
    levels = np.zeros((1, 127, 128), np.uint8)
    levels[0, 1:5, 20:60] = 15
    assert np.array_equal(
        Preprocess(crop_border=0.05).stored(levels, 15), Preprocess(crop_border=0.0).stored(levels, 15)
    )


def test_hysteresis_keeps_faint_ink_touching_a_stroke_and_drops_faint_ink_apart():
    """``threshold_low``: a faint stroke end (a dakuten's fringe) joined to dark ink stays, a faint
    line apart (a cell frame) goes, where a plain threshold keeps both or neither."""
    levels = np.zeros((1, 127, 128), np.uint8)
    levels[0, 30:100, 50:54] = 15  # a dark stroke
    levels[0, 100:106, 50:54] = 5  # its faint end, joined to it (within threshold_reach: 7 steps)
    levels[0, 20:110, 100:102] = 5  # a faint line apart
    x = torch.from_numpy(etl_levels_to_float(levels, 15))
    plain = dict(crop=False, despeckle=0, contrast="none", image_size=128, threshold_low=0.0)
    faint = 5 / 15  # 0.33: between the two thresholds
    kept = {
        "0.35": Preprocess(threshold=0.35, **plain)(x)[0],
        "0.25": Preprocess(threshold=0.25, **plain)(x)[0],
        "hysteresis": Preprocess(threshold=0.35, **{**plain, "threshold_low": 0.25})(x)[0],
    }
    end, line = (slice(100, 106), slice(50, 54)), (slice(20, 110), slice(100, 102))
    assert not kept["0.35"][end].any() and not kept["0.35"][line].any()
    assert torch.allclose(kept["0.25"][end], torch.tensor(faint)) and kept["0.25"][line].all()
    assert torch.allclose(kept["hysteresis"][end], torch.tensor(faint)) and not kept["hysteresis"][line].any()
    assert torch.equal(kept["hysteresis"][30:100], kept["0.35"][30:100])  # the dark stroke as it was
    # the cache's block path computes the same, bit for bit
    pre = Preprocess(threshold=0.35, **{**plain, "threshold_low": 0.25})
    assert np.array_equal(pre.stored(levels, 15), to_uint8(pre(x)))


def test_hysteresis_reaches_only_as_far_as_threshold_reach():
    levels = np.zeros((1, 127, 128), np.uint8)
    levels[0, 10:40, 60:63] = 15
    levels[0, 40:100, 60:63] = 5  # a faint tail of 60 rows below the dark stroke
    plain = dict(crop=False, despeckle=0, contrast="none", image_size=128, threshold=0.35, threshold_low=0.25)
    out = Preprocess(threshold_reach=0.05, **plain).stored(levels, 15)[0]  # 7 steps of 128
    rows = np.flatnonzero(out[:, 61])
    assert rows.max() == 39 + 7
    assert Preprocess(threshold_reach=0.5, **plain).stored(levels, 15)[0][:, 61].nonzero()[0].max() == 99
