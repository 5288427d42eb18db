"""Preprocessing, the on-disk cache, EtlHiragana, splits, the sampler and the datamodule."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import maist.data.cache as cache_mod
import maist.data.dataset as dataset_mod
from maist.data.cache import cache_key, cached_arrays, check_arrays
from maist.data.datamodule import BatchIndexSampler, MaistDataModule, Part
from maist.data.dataset import EtlHiragana, check_loaded, load_arrays
from maist.data.etl import EtlFormatError, pack_records, read_etl8g, write_etl8g
from maist.data.kana import HIRAGANA71, char_to_jis, class_set
from maist.data.preprocess import Preprocess, etl_levels_to_float
from maist.data.split import make_split, split_by_writer, split_random

from conftest import blob_images, etl_dev_set

TINY = Preprocess(image_size=8)
KANJI = [0x3021, 0x3022, 0x4E3F]


def npz_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.npz")) if Path(folder).exists() else []


@pytest.fixture
def read_calls(monkeypatch):
    """Count the decodes EtlHiragana does (each cache miss decodes once)."""
    calls = []
    real = dataset_mod.read_etl8g

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_mod, "read_etl8g", counting)
    return calls


# ================================================================ Preprocess


def light_image(background=4, ink=9) -> np.ndarray:
    """A 127 × 128 light scan (ETL4C-like): grey paper, a pale stroke over ~12% of it."""
    img = np.full((127, 128), background, np.uint8)
    img[30:100, 40:60] = ink
    img[60:70, 20:110] = ink
    return img


@pytest.mark.parametrize("size", [8, 28, 64])
def test_preprocess_shape_and_range(size):
    levels = np.random.default_rng(0).integers(0, 16, size=(5, 127, 128))
    out = Preprocess(image_size=size)(etl_levels_to_float(levels))
    assert out.shape == (5, size, size) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    one = Preprocess(image_size=size)(etl_levels_to_float(levels[0]))
    assert one.shape == (1, size, size)
    torch.testing.assert_close(one[0], out[0])


def test_preprocess_batches_do_not_change_the_result():
    x = etl_levels_to_float(blob_images(7, seed=4))
    p = Preprocess(image_size=16, crop=True)
    torch.testing.assert_close(p(x, batch=2), p(x))
    assert Preprocess(image_size=16)(np.zeros((0, 127, 128), np.float32)).shape == (0, 16, 16)


def test_levels_to_float():
    out = etl_levels_to_float(np.array([0, 3, 15], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0.2, 1])


def test_stretch_makes_a_light_scan_dark_exactly():
    img = etl_levels_to_float(light_image())
    ink = light_image() == 9
    # At 128 the only geometric step is padding 127 → 128 rows, so pixels map 1:1 (row + 0).
    raw = Preprocess(image_size=128, contrast="none")(img)[0][:127]
    np.testing.assert_allclose(raw[~ink].numpy(), 4 / 15, atol=1e-6)
    np.testing.assert_allclose(raw[ink].numpy(), 9 / 15, atol=1e-6)
    out = Preprocess(image_size=128, contrast="stretch")(img)[0][:127]
    assert out[~ink].abs().max() < 1e-6  # paper → 0
    assert (out[ink] > 1 - 1e-6).all()  # pale ink → 1


def test_stretch_at_training_size():
    out = Preprocess(image_size=28, contrast="stretch")(etl_levels_to_float(light_image()))[0]
    assert out[0:4, 0:4].max() < 0.02  # a corner: paper
    assert out[14, 10] > 0.98  # inside the horizontal bar (rows 60–70 → ~13–15)
    none = Preprocess(image_size=28, contrast="none")(etl_levels_to_float(light_image()))[0]
    assert abs(none[0, 0].item() - 4 / 15) < 0.01 and none.max() < 9 / 15 + 0.01


def test_threshold_removes_a_faint_frame():
    img = light_image(background=4, ink=14)
    img[5, :] = img[-5, :] = 6  # a faint cell frame
    img[:, 5] = img[:, -5] = 6
    x = etl_levels_to_float(img)
    kept = Preprocess(image_size=128, threshold=0.0)(x)[0][:127]
    cut = Preprocess(image_size=128, threshold=0.3)(x)[0][:127]
    assert abs(kept[5, 64].item() - 0.2) < 1e-5  # (6 - 4) / (14 - 4)
    assert cut[5, 64] == 0 and cut[64, 5] == 0
    assert cut[65, 50] == 1


def test_crop_centres_and_enlarges_a_small_off_centre_blob():
    img = np.zeros((127, 128), np.float32)
    img[5:17, 100:112] = 1.0  # 12 × 12 near the top-right corner
    plain = Preprocess(image_size=28, contrast="none", crop=False)(img)[0]
    cropped = Preprocess(image_size=28, contrast="none", crop=True)(img)[0]

    def centre(a):
        ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        return (a * ys).sum() / a.sum(), (a * xs).sum() / a.sum()

    def side(a):
        return int((a > 0.5).any(0).sum()), int((a > 0.5).any(1).sum())

    cy, cx = centre(plain)
    assert cy < 6 and cx > 20  # off-centre without crop
    assert max(side(plain)) <= 4  # and small
    cy, cx = centre(cropped)
    assert abs(cy - 13.5) < 0.6 and abs(cx - 13.5) < 0.6
    assert min(side(cropped)) >= 20  # fills the frame but for the margin
    assert cropped[0].max() < 0.05 and cropped[:, 0].max() < 0.05  # the margin is empty


def test_crop_of_an_empty_image_is_empty():
    out = Preprocess(image_size=12, crop=True)(np.zeros((2, 127, 128), np.float32))
    assert out.shape == (2, 12, 12) and out.abs().max() == 0


def test_preprocess_rejects_bad_parameters():
    with pytest.raises(ValueError, match="contrast"):
        Preprocess(contrast="equalize")
    with pytest.raises(ValueError, match="image_size"):
        Preprocess(image_size=3)


# ================================================================ EtlHiragana


def test_dataset_on_generated_records(hiragana_folder, tmp_path):
    src = hiragana_folder(HIRAGANA71, writers=range(100, 106), extra_jis=KANJI)
    ds = EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    keep = ~np.isin(src["jis"], KANJI)
    h71 = class_set("hiragana71")
    assert len(ds) == 71 * 6 == keep.sum()
    assert ds.skipped == 3 * 6
    assert ds.classes == list(HIRAGANA71)
    assert ds.targets.tolist() == [h71.jis_to_label[j] for j in src["jis"][keep].tolist()]
    assert ds.writers.tolist() == src["sheet"][keep].tolist()
    assert ds.data.shape == (len(ds), 1, 8, 8) and ds.data.dtype == torch.float32
    # The dataset holds exactly what the one preprocessing function makes of the records.
    expected = TINY(etl_levels_to_float(src["images"][keep]))
    torch.testing.assert_close(ds.data[:, 0], expected)
    img, target = ds[5]
    assert img.shape == (1, 8, 8) and target == h71.label_of(HIRAGANA71[5]) and isinstance(target, int)
    assert ds.writer(71) == 101
    assert ds.class_counts() == {c: 6 for c in HIRAGANA71}


def test_dataset_transforms(hiragana_folder, tmp_path):
    src = hiragana_folder("あい", writers=[1])
    ds = EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c",
                     transform=lambda x: x * 0 - 1, target_transform=lambda t: t + 1000)
    img, target = ds[1]
    assert (img == -1).all() and target == 1001


def test_class_set_that_selects_nothing(make_records, tmp_path):
    root = tmp_path / "kanji-only"
    make_records(root, jis=KANJI * 2, sheet=1)
    with pytest.raises(EtlFormatError) as err:
        EtlHiragana(root, preprocess=TINY, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert str(root) in msg and "hiragana71" in msg and "6" in msg
    assert npz_files(tmp_path / "c") == []


def test_dataset_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        EtlHiragana(tmp_path / "nowhere", preprocess=TINY, cache_dir=tmp_path / "c")


# ================================================================ cache


def test_second_load_hits_the_cache(hiragana_folder, tmp_path, read_calls):
    src = hiragana_folder("あいうえお", writers=[1, 2, 3])
    first = EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(read_calls) == 1 and len(npz_files(tmp_path / "c")) == 1
    second = EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(read_calls) == 1
    torch.testing.assert_close(second.data, first.data)
    assert second.targets.tolist() == first.targets.tolist()
    assert second.writers.tolist() == first.writers.tolist()
    assert second.skipped == first.skipped


def test_changed_mtime_misses(hiragana_folder, tmp_path, read_calls):
    src = hiragana_folder("あい", writers=[1, 2])
    EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    path = src["root"] / "ETL8G_02"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(read_calls) == 2 and len(npz_files(tmp_path / "c")) == 2


def test_changed_size_misses_and_sees_new_records(hiragana_folder, tmp_path, read_calls):
    src = hiragana_folder("あい", writers=[1, 2])
    before = EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    path = src["root"] / "ETL8G_01"
    st = path.stat()
    more = pack_records(blob_images(1, seed=9), [char_to_jis("う")], [1])
    path.write_bytes(path.read_bytes() + more)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only the size tells
    after = EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(read_calls) == 2
    assert len(after) == len(before) + 1


@pytest.mark.parametrize("change", [
    {"preprocess": Preprocess(image_size=10)},
    {"preprocess": Preprocess(image_size=8, threshold=0.2)},
    {"preprocess": Preprocess(image_size=8, crop=True)},
    {"preprocess": Preprocess(image_size=8, contrast="none")},
    {"class_set": "hiragana75"},
])
def test_changed_parameters_miss(hiragana_folder, tmp_path, read_calls, change):
    src = hiragana_folder("あいっ", writers=[1, 2])
    base = EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    kwargs = {"preprocess": TINY, "class_set": "hiragana71", **change}
    other = EtlHiragana(src["root"], cache_dir=tmp_path / "c", **kwargs)
    assert len(read_calls) == 2 and len(npz_files(tmp_path / "c")) == 2
    if "class_set" in change:
        assert len(other) == len(base) + 2  # っ is in the 75 classes
    elif change["preprocess"].threshold == 0:  # (these blobs have nothing below 0.2 to cut)
        assert other.data.shape != base.data.shape or not torch.equal(other.data, base.data)
    # And each is then a hit of its own.
    EtlHiragana(src["root"], cache_dir=tmp_path / "c", **kwargs)
    EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(read_calls) == 2


def test_cache_key(hiragana_folder):
    src = hiragana_folder("あ", writers=[1, 2])
    params = {"class_set": "hiragana71", "preprocess": TINY.as_dict()}
    assert cache_key(src["root"], params) == cache_key(src["root"], dict(params))
    assert cache_key(src["root"], params) != cache_key(src["root"], {**params, "class_set": "hiragana75"})
    # A different folder with the same bytes is a different source.
    other = src["root"].with_name("copy")
    other.mkdir()
    for p in src["root"].iterdir():
        (other / p.name).write_bytes(p.read_bytes())
    assert cache_key(src["root"], params) != cache_key(other, params)


def test_cache_off_writes_nothing(hiragana_folder, tmp_path, read_calls, monkeypatch):
    monkeypatch.setenv("MAIST_CACHE_DIR", str(tmp_path / "env-cache"))
    src = hiragana_folder("あい", writers=[1])
    EtlHiragana(src["root"], preprocess=TINY, cache_dir=False)
    EtlHiragana(src["root"], preprocess=TINY, cache_dir=False)
    assert len(read_calls) == 2
    assert not (tmp_path / "env-cache").exists()


def test_default_cache_dir_follows_the_environment(hiragana_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MAIST_CACHE_DIR", str(tmp_path / "env-cache"))
    src = hiragana_folder("あ", writers=[1])
    EtlHiragana(src["root"], preprocess=TINY)  # cache_dir=None
    assert len(npz_files(tmp_path / "env-cache")) == 1


def test_interrupted_savez_leaves_no_cache_file(hiragana_folder, tmp_path, read_calls, monkeypatch):
    src = hiragana_folder("あい", writers=[1, 2])
    real_savez = np.savez

    def savez_then_die(file, **arrays):
        file.write(b"PK\x03\x04 half an npz")  # some bytes, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.np, "savez", savez_then_die)
    with pytest.raises(KeyboardInterrupt):
        EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert npz_files(tmp_path / "c") == []
    monkeypatch.setattr(cache_mod.np, "savez", real_savez)
    ds = EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(ds) == 4 and len(read_calls) == 2 and len(npz_files(tmp_path / "c")) == 1


class _DiesHalfway(io.RawIOBase):
    """A file object that writes half of what it is given, then fails."""

    def __init__(self, real, exc):
        self.real, self.exc = real, exc

    def writable(self):
        return True

    def write(self, data):
        self.real.write(bytes(data[: len(data) // 2]))
        self.real.flush()
        raise self.exc

    def close(self):
        self.real.close()
        super().close()


@contextlib.contextmanager
def failing_writes(folder: Path, exc: BaseException):
    """Within the block, every file opened for writing under ``folder`` fails half-way through
    its first write, whichever way it is opened (os.fdopen as write_atomic does, or open,
    Path.write_bytes, np.savez to a path)."""
    folder = Path(folder).resolve()
    real_fdopen, real_open = os.fdopen, io.open

    def inside(target) -> bool:
        try:
            return Path(target).resolve().is_relative_to(folder)
        except (TypeError, OSError):
            return False

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        if "w" in mode and inside(os.readlink(f"/proc/self/fd/{fd}")):
            return _DiesHalfway(f, exc)
        return f

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if ("w" in mode or "x" in mode) and not isinstance(file, int) and inside(file):
            return _DiesHalfway(f, exc)
        return f

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fdopen", fdopen)
        mp.setattr(io, "open", open_)
        mp.setattr("builtins.open", open_)
        yield


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_file_write_leaves_no_file(hiragana_folder, tmp_path, read_calls, exc):
    src = hiragana_folder("あい", writers=[1, 2])
    cache = tmp_path / "c"
    cache.mkdir()
    with failing_writes(cache, exc):
        if isinstance(exc, OSError):
            ds = EtlHiragana(src["root"], preprocess=TINY, cache_dir=cache)  # goes on uncached
            assert len(ds) == 4
        else:
            with pytest.raises(KeyboardInterrupt):
                EtlHiragana(src["root"], preprocess=TINY, cache_dir=cache)
    assert npz_files(cache) == []  # nothing that could load as valid
    assert list(cache.iterdir()) == []  # and no temporary left behind either
    EtlHiragana(src["root"], preprocess=TINY, cache_dir=cache)
    EtlHiragana(src["root"], preprocess=TINY, cache_dir=cache)
    assert len(read_calls) == 2  # the failed run and one more; then a hit


def _corrupt_garbage(data: bytes) -> bytes:
    return b"this is not an npz file" * 20


def _corrupt_empty(data: bytes) -> bytes:
    return b""


def _corrupt_truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _corrupt_bit_flip(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    return bytes(flipped)



@pytest.mark.parametrize("corrupt", [
    _corrupt_garbage,
    _corrupt_empty,
    _corrupt_truncated,
    _corrupt_bit_flip,
])
def test_corrupt_cache_file_is_recomputed(hiragana_folder, tmp_path, read_calls, corrupt):
    src = hiragana_folder("あいう", writers=[1, 2])
    cache = tmp_path / "c"
    good = EtlHiragana(src["root"], preprocess=TINY, cache_dir=cache)
    [path] = npz_files(cache)
    path.write_bytes(corrupt(path.read_bytes()))
    again = EtlHiragana(src["root"], preprocess=TINY, cache_dir=cache)
    assert len(read_calls) == 2
    torch.testing.assert_close(again.data, good.data)
    assert again.targets.tolist() == good.targets.tolist()
    EtlHiragana(src["root"], preprocess=TINY, cache_dir=cache)  # rewritten: a hit now
    assert len(read_calls) == 2


def test_cached_arrays_round_trip(hiragana_folder, tmp_path):
    src = hiragana_folder("あ", writers=[1])
    arrays = {"a": np.arange(12).reshape(3, 4), "b": np.array(7)}
    calls = []

    def compute():
        calls.append(1)
        return arrays

    first = cached_arrays(src["root"], {"k": 1}, compute, tmp_path / "c")
    second = cached_arrays(src["root"], {"k": 1}, compute, tmp_path / "c")
    third = cached_arrays(src["root"], {"k": 2}, compute, tmp_path / "c")
    assert len(calls) == 2
    for got in (first, second, third):
        np.testing.assert_array_equal(got["a"], arrays["a"])
        assert int(got["b"]) == 7


# ================================================================ splits


def writer_fixture(n_writers=20, per_writer=10, seed=0):
    rng = np.random.default_rng(seed)
    writers = np.repeat(np.arange(500, 500 + n_writers), per_writer)
    rng.shuffle(writers)  # writers interleaved, not in blocks
    return writers


def test_writer_split_is_a_partition_by_writer():
    writers = writer_fixture()
    parts = split_by_writer(writers, (0.1, 0.2), seed=3)
    assert len(parts) == 3
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(writers)))
    sets = [set(writers[p].tolist()) for p in parts]
    assert [len(s) for s in sets] == [14, 2, 4]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    for p in parts:  # every record of a chosen writer is there
        assert len(p) == 10 * len(set(writers[p].tolist()))


def test_writer_split_is_deterministic_by_seed():
    writers = writer_fixture()
    a = split_by_writer(writers, (0.1, 0.2), seed=1)
    b = split_by_writer(writers, (0.1, 0.2), seed=1)
    c = split_by_writer(writers, (0.1, 0.2), seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_writer_split_needs_enough_writers():
    with pytest.raises(ValueError, match="writers"):
        split_by_writer(np.array([1, 1, 2, 2]), (0.5, 0.5), seed=0)


def labels_fixture(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(10 + 7 * k, k) for k in range(12)])
    rng.shuffle(labels)
    return labels


def test_random_split_is_stratified_and_a_partition():
    labels = labels_fixture()
    fractions = (0.15, 0.25)
    parts = split_random(labels, fractions, seed=5)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    for k in np.unique(labels):
        n_k = np.sum(labels == k)
        got = [np.sum(labels[p] == k) for p in parts]
        expected = [n_k * (1 - sum(fractions)), n_k * fractions[0], n_k * fractions[1]]
        assert all(abs(g - e) <= 1 for g, e in zip(got, expected)), (k, got, expected)


def test_random_split_is_deterministic_by_seed():
    labels = labels_fixture()
    a = split_random(labels, (0.1, 0.2), seed=7)
    b = split_random(labels, (0.1, 0.2), seed=7)
    c = split_random(labels, (0.1, 0.2), seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_make_split_modes():
    labels, writers = labels_fixture(), writer_fixture(n_writers=len(labels_fixture()), per_writer=1)
    w = make_split("writer", labels, writers, (0.1,), 0)
    r = make_split("random", labels, writers, (0.1,), 0)
    assert len(w) == len(r) == 2
    with pytest.raises(ValueError, match="split_by"):
        make_split("alphabetical", labels, writers, (0.1,), 0)


# ================================================================ BatchIndexSampler


def test_with_replacement_batches():
    s = BatchIndexSampler(20, 10, replacement=True, seed=1, batches_per_epoch=300)
    batches = list(s)
    assert len(s) == len(batches) == 300
    assert all(b.shape == (10,) and b.dtype == torch.int64 for b in batches)
    flat = torch.cat(batches)
    assert flat.min() >= 0 and flat.max() < 20
    # Drawn with replacement: 10 of 20 repeat an index in ~93% of batches, never without.
    repeats = sum(len(torch.unique(b)) < 10 for b in batches)
    assert repeats > 0.8 * len(batches)
    counts = torch.bincount(flat, minlength=20)  # uniform: 150 each on average
    assert counts.min() > 100 and counts.max() < 200


def test_with_replacement_default_length_and_tiny_sets():
    assert len(BatchIndexSampler(1000, 50, replacement=True)) == 20
    assert len(BatchIndexSampler(7, 50, replacement=True)) == 1
    (batch,) = list(BatchIndexSampler(7, 50, replacement=True))
    assert batch.shape == (50,) and batch.max() < 7  # pigeonhole: repeats
    with pytest.raises(ValueError, match="empty"):
        BatchIndexSampler(0, 50, replacement=True)


def test_sampler_is_seeded_by_seed_and_epoch():
    def draw(seed, epoch, replacement):
        s = BatchIndexSampler(100, 10, replacement, seed=seed)
        s.set_epoch(epoch)
        return torch.stack(list(s))

    for replacement in (True, False):
        assert torch.equal(draw(3, 2, replacement), draw(3, 2, replacement))
        assert not torch.equal(draw(3, 2, replacement), draw(3, 3, replacement))
        assert not torch.equal(draw(3, 2, replacement), draw(4, 2, replacement))


def test_epoch_mode_covers_a_permutation():
    s = BatchIndexSampler(103, 10, replacement=False, seed=0, drop_last=False)
    batches = list(s)
    assert len(s) == len(batches) == 11 and [len(b) for b in batches] == [10] * 10 + [3]
    order = torch.cat(batches)
    assert sorted(order.tolist()) == list(range(103))
    assert order.tolist() != list(range(103))  # shuffled
    dropped = list(BatchIndexSampler(103, 10, replacement=False, seed=0))
    assert len(dropped) == 10 and len(torch.unique(torch.cat(dropped))) == 100
    in_order = torch.cat(list(BatchIndexSampler(25, 10, False, shuffle=False, drop_last=False)))
    assert in_order.tolist() == list(range(25))


# ================================================================ MaistDataModule


def datamodule(root, tmp_path, **kw):
    kw = {"image_size": 8, "cache_dir": str(tmp_path / "c"), "batch_size": 16, "eval_batch_size": 100, **kw}
    return MaistDataModule(root=str(root), **kw)


def test_datamodule_writer_split(hiragana_folder, tmp_path):
    src = hiragana_folder("あいうえおかき", writers=range(1, 11))
    dm = datamodule(src["root"], tmp_path, val_fraction=0.1, test_fraction=0.2)
    dm.setup("fit")
    assert dm.num_classes == 71
    parts = [dm.train_set, dm.val_set, dm.test_set]
    assert [len(p) for p in parts] == [7 * 7, 1 * 7, 2 * 7]
    writer_sets = [set(p.writers.tolist()) for p in parts]
    assert set().union(*writer_sets) == set(range(1, 11))
    assert sum(len(w) for w in writer_sets) == 10  # no writer on two sides
    # Loaders: training batches of batch_size, evaluation covers the part in order.
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,)
    xs, ys = zip(*dm.test_dataloader())
    torch.testing.assert_close(torch.cat(xs), dm.test_set.data)
    assert torch.cat(ys).tolist() == dm.test_set.targets.tolist()


def test_datamodule_with_test_root(hiragana_folder, tmp_path):
    chars = HIRAGANA71[::7]  # 11 classes
    train = hiragana_folder(chars, writers=range(1, 11), name="train", seed=0)
    test = hiragana_folder(chars, writers=[90, 91, 92], name="test", seed=50)
    dm = datamodule(train["root"], tmp_path, test_root=str(test["root"]),
                    val_fraction=0.2, test_fraction=0.3)
    dm.setup("fit")
    assert len(dm.test_set) == 3 * 11
    assert set(dm.test_set.writers.tolist()) == {90, 91, 92}
    assert dm.test_set.writers.tolist() == test["sheet"].tolist()  # every record, in file order
    assert dm.test_set.targets.tolist() == [class_set("hiragana71").jis_to_label[j] for j in test["jis"].tolist()]
    assert len(dm.train_set) + len(dm.val_set) == 10 * 11  # root goes to train/val only
    tr, va = set(dm.train_set.writers.tolist()), set(dm.val_set.writers.tolist())
    assert tr | va == set(range(1, 11)) and not tr & va
    assert len(va) == 2  # val_fraction of writers; test_fraction is unused


def test_datamodule_random_split(hiragana_folder, tmp_path):
    src = hiragana_folder("あいう", writers=range(1, 21))
    dm = datamodule(src["root"], tmp_path, split_by="random", val_fraction=0.1, test_fraction=0.2)
    dm.setup()
    for part, share in ((dm.val_set, 0.1), (dm.test_set, 0.2)):
        counts = torch.bincount(part.targets, minlength=71)
        assert all(abs(int(counts[k]) - 20 * share) <= 1 for k in range(3))


def test_datamodule_rejects_unknown_sampler(tmp_path):
    with pytest.raises(ValueError, match="sampler"):
        MaistDataModule(root=str(tmp_path), sampler="shuffle")


def test_part_of():
    ds = type("DS", (), {})()
    ds.data, ds.targets, ds.writers = torch.arange(10.0), torch.arange(10) % 3, torch.arange(10) // 2
    part = Part.of(ds, np.array([1, 4, 9]))
    assert part.data.tolist() == [1.0, 4.0, 9.0] and part.writers.tolist() == [0, 2, 4]
    assert len(Part.of(ds)) == 10
    assert part.describe() == "3 images, 3 writers, 2 classes"


# ================================================================ real internal data


@pytest.fixture
def etl4c_writers(etl_dev, tmp_path):
    """The records of the first 12 writers of etl4c-46, as an ETL8G file in a temporary folder
    that is deleted after the test (preprocessing all 5,880 would take ~10 s)."""
    recs = read_etl8g(etl_dev_set(etl_dev, "etl4c-46") / "ETL8G_01")
    keep = recs.sheet < 5013
    folder = tmp_path / "etl4c-12"
    write_etl8g(folder / "ETL8G_01", recs.images[keep], recs.jis[keep], recs.sheet[keep], recs.serial[keep])
    yield folder, recs.images[keep]
    shutil.rmtree(folder, ignore_errors=True)


def test_etl4c_through_the_dataset(etl4c_writers, scratch_cache):
    """ETL4C's light scans (paper ~4/15, ink ≤ 9/15) come out of preprocessing like dark ones."""
    root, raw = etl4c_writers
    assert np.median(raw.reshape(len(raw), -1), axis=1).min() >= 3  # grey paper going in
    ds = EtlHiragana(root, preprocess=Preprocess(image_size=28), cache_dir=scratch_cache)
    assert len(ds) == 12 * 49 and ds.skipped == 0
    assert torch.unique(ds.writers).tolist() == list(range(5001, 5013))
    counts = ds.class_counts()
    assert len(counts) == 46 and set(counts.values()) == {12, 24}  # い う え twice a sheet
    flat = ds.data.reshape(len(ds), -1)
    assert flat.median(dim=1).values.median() < 0.02  # paper → ~0
    assert flat.max(dim=1).values.median() > 0.9  # pale ink → ~1
    assert (flat.max(dim=1).values > 0.5).all()  # no image lost to the stretch


# ================================================================ duplicate records, bad caches


def _with_a_copy(root: Path, where: str, tmp_path: Path) -> Path:
    """``root`` (ETL8G_01, ETL8G_02) with ETL8G_01 read twice: from a sub-folder, or from a zip
    that holds it under two paths. Returns what to point data.root at."""
    if where == "folder":
        (root / "copy").mkdir()
        shutil.copy(root / "ETL8G_01", root / "copy" / "ETL8G_01")
        return root
    archive = tmp_path / "ETL8G.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("ETL8G/ETL8G_01", "ETL8G/ETL8G_02", "ETL8G (copy)/ETL8G_01"):
            zf.write(root / name.rsplit("/", 1)[-1], name)
    return archive


@pytest.mark.parametrize("where", ["folder", "zip"])
def test_dataset_drops_duplicate_records(hiragana_folder, tmp_path, read_calls, caplog, where):
    src = hiragana_folder("あいうえお", writers=range(1, 7))  # 15 records a file
    root = _with_a_copy(src["root"], where, tmp_path)
    for _ in range(2):  # decoded, then from the cache: the same, and the same warning
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="maist.data.dataset"):
            ds = EtlHiragana(root, preprocess=TINY, cache_dir=tmp_path / "c")
        assert len(ds) == 30 and ds.duplicates == 15 and ds.skipped == 0
        assert ds.writers.tolist() == src["sheet"].tolist()
        torch.testing.assert_close(ds.data[:, 0], TINY(etl_levels_to_float(src["images"])))
        [warning] = [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()]
        assert str(root) in warning and "dropped 15 duplicate records" in warning
    assert len(read_calls) == 1


@pytest.mark.parametrize("where", ["folder", "zip"])
def test_random_split_puts_no_copy_of_a_training_image_in_test(hiragana_folder, tmp_path, where):
    """The article's random split over a root that reads one file twice: without dropping the
    copies, most test images would also be training images."""
    src = hiragana_folder("あいうえおかきくけこ", writers=range(1, 11))  # 50 records a file
    root = _with_a_copy(src["root"], where, tmp_path)
    arrays = load_arrays(root, "hiragana71", Preprocess(image_size=28), cache_dir=tmp_path / "c")
    rows = [img.tobytes() for img in arrays["images"]]
    assert len(rows) == 100 and int(arrays["duplicates"]) == 50
    assert len(set(rows)) == 100  # the records themselves are all different
    train, val, test = make_split("random", arrays["labels"], arrays["writers"], (0.1, 0.2), seed=0)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    seen = {rows[i] for i in train}
    assert not [i for i in (*val, *test) if rows[i] in seen]


def _drop_labels(arrays):
    del arrays["labels"]


def _short_labels(arrays):
    arrays["labels"] = arrays["labels"][:-1]


def _flat_images(arrays):
    arrays["images"] = arrays["images"].reshape(len(arrays["images"]), -1)


def _float_writers(arrays):
    arrays["writers"] = arrays["writers"].astype(np.float32)


def _no_duplicates_count(arrays):  # a cache written before CACHE_VERSION 2 had none
    del arrays["duplicates"]


@pytest.mark.parametrize("spoil", [_drop_labels, _short_labels, _flat_images, _float_writers,
                                   _no_duplicates_count])
def test_inconsistent_cache_file_is_deleted_and_rewritten(hiragana_folder, tmp_path, read_calls,
                                                          caplog, spoil):
    src = hiragana_folder("あいう", writers=[1, 2, 3])
    good = load_arrays(src["root"], "hiragana71", TINY, cache_dir=False)
    arrays = dict(good)
    spoil(arrays)
    params = {"class_set": "hiragana71", "preprocess": TINY.as_dict()}
    path = tmp_path / "c" / f"{cache_key(src['root'], params)}.npz"  # where the code looks
    path.parent.mkdir()
    np.savez(path, **arrays)  # a valid npz, inconsistent inside

    with caplog.at_level(logging.WARNING, logger="maist.data.cache"):
        ds = EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")

    assert len(read_calls) == 2  # recomputed
    assert len(ds) == 9 and ds.targets.tolist() == good["labels"].tolist()
    torch.testing.assert_close(ds.data[:, 0], torch.from_numpy(good["images"]))
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(path) in warning.getMessage()
    assert npz_files(tmp_path / "c") == [path]  # rewritten in place, and valid now
    with np.load(path) as npz:
        rewritten = {k: npz[k] for k in npz.files}
    assert check_loaded(rewritten) is None and sorted(rewritten) == sorted(good)
    for key in good:
        np.testing.assert_array_equal(rewritten[key], good[key])
    EtlHiragana(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(read_calls) == 2  # a hit


def test_cache_validate_is_the_callers(hiragana_folder, tmp_path):
    """cached_arrays knows no keys: the caller's validate decides, and a rejected file goes."""
    src = hiragana_folder("あ", writers=[1])
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(3)}

    cached_arrays(src["root"], {"k": 1}, compute, tmp_path / "c")
    [path] = npz_files(tmp_path / "c")
    cached_arrays(src["root"], {"k": 1}, compute, tmp_path / "c", validate=lambda a: None)
    assert len(calls) == 1
    cached_arrays(src["root"], {"k": 1}, compute, tmp_path / "c",
                  validate=lambda a: None if "b" in a else "no b")
    assert len(calls) == 2 and npz_files(tmp_path / "c") == [path]
    assert check_arrays({"a": np.zeros((2, 3)), "n": np.array(1)}, {"a": 2}, ("n",)) is None
    assert check_arrays({"a": np.zeros(2), "b": np.zeros(3)}, {"a": 1, "b": 1}) == \
        "arrays of different lengths: a 2, b 3"
    assert check_arrays({"a": np.zeros(2)}, {"a": 1}, ("n",)) == "missing n"
