"""Preprocessing, the on-disk cache, EtlDataset, splits, the sampler and the datamodule."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import blob_images, etl_dev_set
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

import maist.data.cache as cache_mod
import maist.data.datamodule as datamodule_mod
import maist.data.dataset as dataset_mod
import maist.data.part as part_mod
from maist.data.cache import (
    NPY_HEADER_BYTES,
    RowWriter,
    cache_key,
    cached_arrays,
    check_arrays,
    load_entry,
    npy_header,
    save_small,
)
from maist.data.datamodule import MaistDataModule
from maist.data.dataset import EtlDataset, check_loaded, load_arrays, to_float, to_uint8
from maist.data.etl import ETL8G, EtlFormatError, pack_records, read_etl, write_etl
from maist.data.kana import HIRAGANA71, char_to_jis, class_set
from maist.data.part import Part
from maist.data.preprocess import etl_levels_to_float
from maist.data.samplers import BatchIndexSampler
from maist.data.split import make_split, split_by_writer, split_random
from maist.errors import ConfigError
from tests.helpers import plain_preprocess

TINY = plain_preprocess(image_size=8)
KANJI = [0x3021, 0x3022, 0x4E3F]


def entries(folder: Path) -> list[Path]:
    """The cache entries in ``folder`` (folders; not lock files, not temporaries)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.exists() else []


def leftovers(folder: Path) -> list[str]:
    """What ``folder`` holds besides its lock files."""
    return sorted(p.name for p in Path(folder).iterdir() if p.suffix != ".lock")


def quantised(floats: torch.Tensor) -> torch.Tensor:
    """Preprocessed floats as the cache stores them."""
    return torch.from_numpy(to_uint8(floats))


@pytest.fixture
def read_calls(monkeypatch):
    """Count the builds EtlDataset does (each cache miss decodes the root once)."""
    calls = []
    real = dataset_mod.build_arrays

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_mod, "build_arrays", counting)
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
    out = plain_preprocess(image_size=size)(etl_levels_to_float(levels))
    assert out.shape == (5, size, size) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    one = plain_preprocess(image_size=size)(etl_levels_to_float(levels[0]))
    assert one.shape == (1, size, size)
    torch.testing.assert_close(one[0], out[0])


def test_preprocess_batches_do_not_change_the_result():
    x = etl_levels_to_float(blob_images(7, seed=4))
    p = plain_preprocess(image_size=16, crop=True)
    torch.testing.assert_close(p(x, batch=2), p(x))
    assert plain_preprocess(image_size=16)(np.zeros((0, 127, 128), np.float32)).shape == (0, 16, 16)


def test_levels_to_float():
    out = etl_levels_to_float(np.array([0, 3, 15], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0.2, 1])


def test_stretch_makes_a_light_scan_dark_exactly():
    img = etl_levels_to_float(light_image())
    ink = light_image() == 9
    # At 128 the only geometric step is padding 127 → 128 rows, so pixels map 1:1 (row + 0).
    raw = plain_preprocess(image_size=128, contrast="none")(img)[0][:127]
    np.testing.assert_allclose(raw[~ink].numpy(), 4 / 15, atol=1e-6)
    np.testing.assert_allclose(raw[ink].numpy(), 9 / 15, atol=1e-6)
    out = plain_preprocess(image_size=128, contrast="stretch")(img)[0][:127]
    assert out[~ink].abs().max() < 1e-6  # paper → 0
    assert (out[ink] > 1 - 1e-6).all()  # pale ink → 1


def test_stretch_at_training_size():
    out = plain_preprocess(image_size=28, contrast="stretch")(etl_levels_to_float(light_image()))[0]
    assert out[0:4, 0:4].max() < 0.02  # a corner: paper
    assert out[14, 10] > 0.98  # inside the horizontal bar (rows 60–70 → ~13–15)
    none = plain_preprocess(image_size=28, contrast="none")(etl_levels_to_float(light_image()))[0]
    assert abs(none[0, 0].item() - 4 / 15) < 0.01 and none.max() < 9 / 15 + 0.01


def test_threshold_removes_a_faint_frame():
    img = light_image(background=4, ink=14)
    img[5, :] = img[-5, :] = 6  # a faint cell frame
    img[:, 5] = img[:, -5] = 6
    x = etl_levels_to_float(img)
    kept = plain_preprocess(image_size=128, threshold=0.0)(x)[0][:127]
    cut = plain_preprocess(image_size=128, threshold=0.3)(x)[0][:127]
    assert abs(kept[5, 64].item() - 0.2) < 1e-5  # (6 - 4) / (14 - 4)
    assert cut[5, 64] == 0 and cut[64, 5] == 0
    assert cut[65, 50] == 1


def test_crop_centres_and_enlarges_a_small_off_centre_blob():
    img = np.zeros((127, 128), np.float32)
    img[5:17, 100:112] = 1.0  # 12 × 12 near the top-right corner
    plain = plain_preprocess(image_size=28, contrast="none", crop=False)(img)[0]
    cropped = plain_preprocess(image_size=28, contrast="none", crop=True)(img)[0]

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
    out = plain_preprocess(image_size=12, crop=True)(np.zeros((2, 127, 128), np.float32))
    assert out.shape == (2, 12, 12) and out.abs().max() == 0


def test_preprocess_rejects_bad_parameters():
    with pytest.raises(ValueError, match="contrast"):
        plain_preprocess(contrast="equalize")
    with pytest.raises(ValueError, match="image_size"):
        plain_preprocess(image_size=3)


# ================================================================ EtlDataset


def test_dataset_on_generated_records(hiragana_folder, tmp_path):
    src = hiragana_folder(HIRAGANA71, writers=range(100, 106), extra_jis=KANJI)
    ds = EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    keep = ~np.isin(src["jis"], KANJI)
    h71 = class_set("hiragana71")
    assert len(ds) == 71 * 6 == keep.sum()
    assert ds.skipped == 3 * 6
    assert ds.classes == list(HIRAGANA71)
    assert ds.targets.tolist() == [h71.jis_to_label[j] for j in src["jis"][keep].tolist()]
    assert ds.writers.tolist() == src["sheet"][keep].tolist()
    assert ds.images.shape == (len(ds), 1, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.data.shape == (len(ds), 1, 8, 8) and ds.data.dtype == torch.float32
    # The dataset holds exactly what the one preprocessing function makes of the records,
    # stored as round(255 x): within half a step of it as floats.
    expected = TINY(etl_levels_to_float(src["images"][keep]))
    assert torch.equal(ds.images[:, 0], quantised(expected))
    torch.testing.assert_close(ds.data[:, 0], expected, atol=0.5 / 255 + 1e-6, rtol=0)
    img, target = ds[5]  # a PIL image, as torchvision's datasets hand their transforms
    assert img.mode == "L" and img.size == (8, 8)
    assert np.array_equal(np.asarray(img), ds.images[5, 0].numpy())
    assert target == h71.label_of(HIRAGANA71[5]) and isinstance(target, int)
    assert ds.class_to_idx["あ"] == 0 and ds.class_to_idx[HIRAGANA71[5]] == target
    assert ds.writers[71] == 101
    assert ds.class_counts() == {c: 6 for c in HIRAGANA71}


def test_dataset_transforms(hiragana_folder, tmp_path):
    src = hiragana_folder("あい", writers=[1])
    ds = EtlDataset(
        src["root"],
        preprocess=TINY,
        cache_dir=tmp_path / "c",
        transform=ToTensor(),
        target_transform=lambda t: t + 1000,
    )
    img, target = ds[1]
    assert torch.equal(img, to_float(ds.images[1])) and target == 1001  # what training feeds the network
    loader = DataLoader(ds, batch_size=2)
    x, y = next(iter(loader))
    assert x.shape == (2, 1, 8, 8) and y.tolist() == [1000, 1001]


def test_class_set_that_selects_nothing(make_records, tmp_path):
    root = tmp_path / "kanji-only"
    make_records(root, jis=KANJI * 2, sheet=1)
    with pytest.raises(EtlFormatError) as err:
        EtlDataset(root, preprocess=TINY, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert str(root) in msg and "hiragana71" in msg and "6" in msg
    assert entries(tmp_path / "c") == [] and leftovers(tmp_path / "c") == []


def test_dataset_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        EtlDataset(tmp_path / "nowhere", preprocess=TINY, cache_dir=tmp_path / "c")


# ================================================================ cache


def test_second_load_hits_the_cache(hiragana_folder, tmp_path, read_calls):
    src = hiragana_folder("あいうえお", writers=[1, 2, 3])
    first = EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(read_calls) == 1 and len(entries(tmp_path / "c")) == 1
    second = EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(read_calls) == 1
    torch.testing.assert_close(second.data, first.data)
    assert second.targets.tolist() == first.targets.tolist()
    assert second.writers.tolist() == first.writers.tolist()
    assert second.skipped == first.skipped


def test_changed_mtime_misses(hiragana_folder, tmp_path, read_calls):
    src = hiragana_folder("あい", writers=[1, 2])
    EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    path = src["root"] / "ETL8G_02"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(read_calls) == 2 and len(entries(tmp_path / "c")) == 2


def test_changed_size_misses_and_sees_new_records(hiragana_folder, tmp_path, read_calls):
    src = hiragana_folder("あい", writers=[1, 2])
    before = EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    path = src["root"] / "ETL8G_01"
    st = path.stat()
    more = pack_records(blob_images(1, seed=9), [char_to_jis("う")], [1])
    path.write_bytes(path.read_bytes() + more)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only the size tells
    after = EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(read_calls) == 2
    assert len(after) == len(before) + 1


@pytest.mark.parametrize(
    "change",
    [
        {"preprocess": plain_preprocess(image_size=10)},
        {"preprocess": plain_preprocess(image_size=8, threshold=0.2)},
        {"preprocess": plain_preprocess(image_size=8, crop=True)},
        {"preprocess": plain_preprocess(image_size=8, contrast="none")},
        {"class_set": "hiragana75"},
    ],
)
def test_changed_parameters_miss(hiragana_folder, tmp_path, read_calls, change):
    src = hiragana_folder("あいっ", writers=[1, 2])
    base = EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    kwargs = {"preprocess": TINY, "class_set": "hiragana71", **change}
    other = EtlDataset(src["root"], cache_dir=tmp_path / "c", **kwargs)
    assert len(read_calls) == 2 and len(entries(tmp_path / "c")) == 2
    if "class_set" in change:
        assert len(other) == len(base) + 2  # っ is in the 75 classes
    elif change["preprocess"].threshold == 0:  # (these blobs have nothing below 0.2 to cut)
        assert other.data.shape != base.data.shape or not torch.equal(other.data, base.data)
    # And each is then a hit of its own.
    EtlDataset(src["root"], cache_dir=tmp_path / "c", **kwargs)
    EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
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
    EtlDataset(src["root"], preprocess=TINY, cache_dir=False)
    EtlDataset(src["root"], preprocess=TINY, cache_dir=False)
    assert len(read_calls) == 2
    assert not (tmp_path / "env-cache").exists()


def test_default_cache_dir_follows_the_environment(hiragana_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MAIST_CACHE_DIR", str(tmp_path / "env-cache"))
    src = hiragana_folder("あ", writers=[1])
    EtlDataset(src["root"], preprocess=TINY)  # cache_dir=None
    assert len(entries(tmp_path / "env-cache")) == 1


def test_interrupted_savez_leaves_no_cache_file(hiragana_folder, tmp_path, read_calls, monkeypatch):
    """Interrupted after the images were written, while writing the small arrays: the
    temporary folder goes, and no entry appears."""
    src = hiragana_folder("あい", writers=[1, 2])
    real_savez = np.savez

    def savez_then_die(file, **arrays):
        Path(file).write_bytes(b"PK\x03\x04 half an npz")  # some bytes, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.np, "savez", savez_then_die)
    with pytest.raises(KeyboardInterrupt):
        EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert entries(tmp_path / "c") == [] and leftovers(tmp_path / "c") == []
    monkeypatch.setattr(cache_mod.np, "savez", real_savez)
    ds = EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(ds) == 4 and len(read_calls) == 2 and len(entries(tmp_path / "c")) == 1


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
            # The first write (the image array's header) fails before anything is decoded;
            # the build then runs again in a temporary folder outside the cache.
            ds = EtlDataset(src["root"], preprocess=TINY, cache_dir=cache)
            assert len(ds) == 4 and len(read_calls) == 2
        else:
            with pytest.raises(KeyboardInterrupt):
                EtlDataset(src["root"], preprocess=TINY, cache_dir=cache)
            assert len(read_calls) == 1
    assert entries(cache) == []  # nothing that could load as valid
    key = cache_key(src["root"], {"class_set": "hiragana71", "preprocess": TINY.as_dict()})
    assert [p.name for p in cache.iterdir()] == [f"{key}.lock"]  # no temporary left behind
    calls = len(read_calls)
    EtlDataset(src["root"], preprocess=TINY, cache_dir=cache)
    EtlDataset(src["root"], preprocess=TINY, cache_dir=cache)
    assert len(read_calls) == calls + 1  # one more build; then a hit


def _corrupt_garbage(data: bytes) -> bytes:
    return b"this is neither an npy nor an npz file" * 20


def _corrupt_empty(data: bytes) -> bytes:
    return b""


def _corrupt_truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _corrupt_bit_flip(data: bytes) -> bytes:
    """A byte of the first array's data (just past its .npy header) flipped."""
    flipped = bytearray(data)
    flipped[data.index(b"\x93NUMPY") + NPY_HEADER_BYTES + 1] ^= 0xFF
    return bytes(flipped)


def _corrupt_more_rows(data: bytes) -> bytes:
    """The header claims one row more than the file holds."""
    n = int(data[:NPY_HEADER_BYTES].split(b"'shape': (")[1].split(b",")[0])
    return npy_header(np.uint8, (n + 1, 8, 8)) + data[NPY_HEADER_BYTES:]


@pytest.mark.parametrize(
    "name, corrupt",
    [
        ("images.npy", _corrupt_garbage),
        ("images.npy", _corrupt_empty),
        ("images.npy", _corrupt_truncated),
        ("images.npy", _corrupt_more_rows),
        ("images.npy", None),  # missing
        ("arrays.npz", _corrupt_garbage),
        ("arrays.npz", _corrupt_empty),
        ("arrays.npz", _corrupt_truncated),
        ("arrays.npz", _corrupt_bit_flip),  # the zip's CRC
        ("arrays.npz", None),
    ],
)
def test_corrupt_cache_file_is_recomputed(hiragana_folder, tmp_path, read_calls, caplog, name, corrupt):
    src = hiragana_folder("あいう", writers=[1, 2])
    cache = tmp_path / "c"
    good = EtlDataset(src["root"], preprocess=TINY, cache_dir=cache)
    images, targets = good.images.clone(), good.targets.tolist()
    del good  # its memory map: a mapped file changed in place is a SIGBUS waiting to happen
    [entry] = entries(cache)
    path = entry / name
    if corrupt is None:
        path.unlink()
    else:
        path.write_bytes(corrupt(path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="maist.data.cache"):
        again = EtlDataset(src["root"], preprocess=TINY, cache_dir=cache)
    assert len(read_calls) == 2
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"deleting bad cache entry {entry} (")
    assert torch.equal(again.images, images) and again.targets.tolist() == targets
    EtlDataset(src["root"], preprocess=TINY, cache_dir=cache)  # rewritten: a hit now
    assert len(read_calls) == 2 and entries(cache) == [entry] and leftovers(cache) == [entry.name]


def write_rows(folder: Path, name: str, rows: np.ndarray, capacity: int | None = None) -> None:
    with RowWriter(folder / name, capacity or len(rows), rows.shape[1:], rows.dtype) as out:
        out.append(rows)


def test_cached_arrays_round_trip(hiragana_folder, tmp_path):
    src = hiragana_folder("あ", writers=[1])
    big, small = np.arange(24, dtype=np.uint8).reshape(3, 2, 4), np.array(7)
    calls = []

    def build(folder):
        calls.append(folder)
        write_rows(folder, "big.npy", big)
        save_small(folder, b=small)

    first = cached_arrays(src["root"], {"k": 1}, build, tmp_path / "c")
    second = cached_arrays(src["root"], {"k": 1}, build, tmp_path / "c")
    third = cached_arrays(src["root"], {"k": 2}, build, tmp_path / "c")
    assert len(calls) == 2
    assert all(p.parent == tmp_path / "c" and p.name.endswith(".tmp") for p in calls)  # built beside
    for got in (first, second, third):
        assert sorted(got) == ["b", "big"]
        np.testing.assert_array_equal(got["big"], big)
        assert isinstance(got["big"], np.memmap) and got["big"].mode == "c"  # mapped, not read
        assert int(got["b"]) == 7
    uncached = cached_arrays(src["root"], {"k": 1}, build, False)
    assert len(calls) == 3 and not calls[-1].exists()  # built in a temporary folder, gone
    np.testing.assert_array_equal(uncached["big"], big)  # still readable: the map holds the data


def test_row_writer_fills_in_order_and_cuts_at_the_rows_written(tmp_path):
    rows = np.arange(5 * 3 * 2, dtype=np.uint8).reshape(5, 3, 2)
    path = tmp_path / "rows.npy"
    with RowWriter(path, capacity=100, row_shape=(3, 2)) as out:
        assert path.stat().st_size == NPY_HEADER_BYTES + 100 * 6  # the full size from the start
        out.append(rows[:2])
        out.append(rows[2:])
        with pytest.raises(ValueError, match="rows of shape"):
            out.append(np.zeros((1, 2, 3), np.uint8))
    assert path.stat().st_size == NPY_HEADER_BYTES + 5 * 6
    np.testing.assert_array_equal(np.load(path), rows)
    with pytest.raises(ValueError, match="more than the 2 rows"):
        with RowWriter(tmp_path / "small.npy", capacity=2, row_shape=(3, 2)) as out:
            out.append(rows[:3])
    assert len(npy_header(np.uint8, (10**12, 4096, 4096))) == NPY_HEADER_BYTES


def test_a_killed_builds_temporary_folder_goes_with_the_next_build(hiragana_folder, tmp_path):
    src = hiragana_folder("あ", writers=[1])
    key = cache_key(src["root"], {"k": 1})
    stale = tmp_path / "c" / f".{key}.x1y2.tmp"  # as a SIGKILL in the middle of a build leaves it
    stale.mkdir(parents=True)
    (stale / "images.npy").write_bytes(b"half")
    cached_arrays(src["root"], {"k": 1}, lambda folder: save_small(folder, n=np.array(1)), tmp_path / "c")
    assert leftovers(tmp_path / "c") == [key]


def test_concurrent_misses_build_once(hiragana_folder, tmp_path):
    """Processes (here threads, each with its own lock file handle) that miss at the same time:
    the first builds, the others wait on the lock and load its entry."""
    src = hiragana_folder("あ", writers=[1])
    calls, results = [], []
    arrived = threading.Barrier(3)

    def build(folder):
        calls.append(folder)
        time.sleep(0.5)  # the others arrive meanwhile, and wait
        write_rows(folder, "big.npy", np.full((4, 2), 9, np.uint8))
        save_small(folder, n=np.array(4))

    def load():
        arrived.wait()
        results.append(cached_arrays(src["root"], {"k": 1}, build, tmp_path / "c"))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 3
    assert all(int(r["n"]) == 4 and (r["big"] == 9).all() for r in results)
    key = cache_key(src["root"], {"k": 1})
    assert leftovers(tmp_path / "c") == [key] and (tmp_path / "c" / f"{key}.lock").is_file()


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


def test_writer_split_without_validation_trains_on_its_writers_and_keeps_the_test_writers():
    """val_fraction 0 (experiment=best_accuracy): the validation writers join training, and the
    test writers are the same as with validation, so the two test figures compare."""
    writers = writer_fixture()
    train, val, test = split_by_writer(writers, (0.1, 0.2), seed=3)
    train0, val0, test0 = split_by_writer(writers, (0.0, 0.2), seed=3)
    assert len(val0) == 0 and len(val) > 0
    np.testing.assert_array_equal(test0, test)
    np.testing.assert_array_equal(train0, np.sort(np.concatenate([train, val])))


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
    # Loaders: training batches of batch_size as stored (uint8), evaluation covers the part in order.
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.uint8 and y.shape == (16,)
    xs, ys = zip(*dm.test_dataloader())
    assert torch.equal(torch.cat(xs), dm.test_set.images())
    assert torch.cat(ys).tolist() == dm.test_set.targets.tolist()
    # ... made float per batch, after the transfer to the device
    fx, fy = dm.on_after_batch_transfer((xs[0], ys[0]), 0)
    assert fx.dtype == torch.float32 and torch.equal(fx, xs[0].float() / 255) and fy is ys[0]
    # The parts share the dataset's images: nothing is copied.
    assert dm.train_set.store is dm.val_set.store is dm.test_set.store


@pytest.mark.parametrize("split_by", ["writer", "random"])
def test_the_dataset_split_is_the_datamodules_split(hiragana_folder, tmp_path, split_by):
    """``EtlDataset(split=…)`` outside Lightning holds exactly the records of the data module's
    part with the same settings, and refuses a split that does not exist."""
    src = hiragana_folder("あいうえおかき", writers=range(1, 11))
    kw = {"split_by": split_by, "val_fraction": 0.1, "test_fraction": 0.2, "split_seed": 3}
    steps = {k: v for k, v in TINY.as_dict().items() if k != "image_size"}
    dm = datamodule(src["root"], tmp_path, preprocess=steps, **kw)
    dm.setup("fit")
    for name in ("train", "val", "test"):
        ds = EtlDataset(src["root"], split=name, preprocess=TINY, cache_dir=tmp_path / "c", **kw)
        part = getattr(dm, f"{name}_set")
        assert len(ds) == len(part) > 0
        assert torch.equal(ds.images, part.images()) and torch.equal(ds.targets, part.targets)
        assert torch.equal(ds.writers, part.writers)
    with pytest.raises(ConfigError, match="split='dev'"):
        EtlDataset(src["root"], split="dev", preprocess=TINY, cache_dir=tmp_path / "c")


def test_datamodule_with_test_root(hiragana_folder, tmp_path):
    chars = HIRAGANA71[::7]  # 11 classes
    train = hiragana_folder(chars, writers=range(1, 11), name="train", seed=0)
    test = hiragana_folder(chars, writers=[90, 91, 92], name="test", seed=50)
    dm = datamodule(train["root"], tmp_path, test_root=str(test["root"]), val_fraction=0.2, test_fraction=0.3)
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


def fake_dataset(n=10):
    """A dataset whose image k holds the value 10 k everywhere."""
    return SimpleNamespace(
        images=(torch.arange(n, dtype=torch.uint8) * 10).reshape(n, 1, 1, 1).expand(n, 1, 2, 2),
        targets=torch.arange(n) % 3,
        writers=torch.arange(n) // 2,
    )


def test_part_of():
    ds = fake_dataset()
    part = Part.of(ds, np.array([1, 4, 9]))
    assert part.images()[:, 0, 0, 0].tolist() == [10, 40, 90] and part.writers.tolist() == [0, 2, 4]
    assert part.images(2)[:, 0, 0, 0].tolist() == [90]
    assert part.images(slice(1, None))[:, 0, 0, 0].tolist() == [40, 90]
    assert part.images([2, 0])[:, 0, 0, 0].tolist() == [90, 10]
    assert part.images(torch.tensor([1]))[:, 0, 0, 0].tolist() == [40]
    assert part.float_images([0]).dtype == torch.float32 and part.float_images([0])[0, 0, 0, 0] == 10 / 255
    assert torch.equal(part.data, part.float_images())
    whole = Part.of(ds)
    assert len(whole) == 10 and whole.images() is ds.images and whole.rows is None
    assert part.describe() == "3 images, 3 writers, 2 classes"


def test_part_to_a_device_is_a_compact_copy(monkeypatch):
    monkeypatch.setattr(part_mod, "COPY_CHUNK", 2)  # several chunks
    part = Part.of(fake_dataset(), np.array([9, 1, 4, 8, 0]))
    moved = part.to("cpu")
    assert moved.rows is None and moved.store.shape == (5, 1, 2, 2) and moved.store.is_contiguous()
    assert torch.equal(moved.images(), part.images()) and torch.equal(moved.targets, part.targets)
    assert moved.to("cpu") is moved  # already there
    meta = part.to("meta")  # a device other than the host's, without an accelerator
    assert meta.device.type == "meta" and meta.targets.device.type == "meta"
    assert meta.images(torch.tensor([0, 3])).device.type == "meta"  # indexed on the device


def test_ink_ratio_is_that_of_the_float_images():
    store = torch.zeros(50, 1, 20, 20, dtype=torch.uint8)
    for k in range(50):  # a box of side 4 + k % 13, some of it faint (below 0.3)
        side = 4 + k % 13
        store[k, 0, 2 : 2 + side, 3 : 3 + side] = 200
        store[k, 0, 2, 3 : 3 + side + 2] = 76  # 76 / 255 < 0.3 < 77 / 255: not ink
    part = Part(store, torch.zeros(50, dtype=torch.long), torch.zeros(50, dtype=torch.long))

    def by_floats(x, level=0.3):  # the definition, on floats
        ink = x[:, 0] > level
        rows, cols = ink.any(2).float(), ink.any(1).float()
        return float((torch.maximum(rows.sum(1), cols.sum(1)) / 20).median())

    assert part.ink_ratio() == pytest.approx(by_floats(part.float_images()))
    assert part.ink_ratio(chunk=7) == part.ink_ratio()
    positions = torch.linspace(0, 49, 10).round().long()
    assert part.ink_ratio(sample=10) == pytest.approx(by_floats(part.float_images(positions)))
    assert Part(store[:0], store[:0, 0, 0, 0].long(), store[:0, 0, 0, 0].long()).ink_ratio() == 1.0


class FakeStrategy:
    def __init__(self, device):
        self.root_device = torch.device(device)


def test_training_images_go_to_the_device(hiragana_folder, tmp_path, monkeypatch):
    """With a CUDA trainer, the training part is copied to the device once, when the training
    loader is made, and batches are indexed there. No GPU here: the same path with "cpu"."""
    src = hiragana_folder("あいうえお", writers=range(1, 11))
    dm = datamodule(src["root"], tmp_path)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(strategy=FakeStrategy("cpu"), global_rank=0, world_size=1, global_step=0)
    assert dm.images_device() is None  # the host is not a device to copy to
    monkeypatch.setattr(datamodule_mod, "IMAGES_ON_DEVICE", ("cuda", "cpu"))
    before = dm.train_set
    loader = dm.train_dataloader()
    after = dm.train_set
    assert after is not before and after.rows is None  # the part's own images, compact
    assert torch.equal(after.images(), before.images()) and torch.equal(after.targets, before.targets)
    assert loader.dataset.part is after
    x, y = next(iter(loader))
    assert x.dtype == torch.uint8 and x.shape == (16, 1, 8, 8)
    dm.train_dataloader()
    assert dm.train_set is after  # copied once
    dm.hparams.num_workers = 1  # workers cannot index device memory
    assert dm.images_device() is None
    dm.trainer = None
    assert dm.images_device() is None


# ================================================================ real internal data


@pytest.fixture
def etl4c_writers(etl_dev, tmp_path):
    """The records of the first 12 writers of etl4c-46, as an ETL8G file in a temporary folder
    that is deleted after the test (preprocessing all 5,880 would take ~10 s)."""
    recs = read_etl(etl_dev_set(etl_dev, "etl4c-46") / "ETL8G_01")
    keep = recs.sheet < 5013
    folder = tmp_path / "etl4c-12"
    write_etl(folder / "ETL8G_01", ETL8G, recs.images[keep], recs.jis[keep], recs.sheet[keep], recs.serial[keep])
    yield folder, recs.images[keep]
    shutil.rmtree(folder, ignore_errors=True)


def test_etl4c_through_the_dataset(etl4c_writers, scratch_cache):
    """ETL4C's light scans (paper ~4/15, ink ≤ 9/15) come out of preprocessing like dark ones."""
    root, raw = etl4c_writers
    assert np.median(raw.reshape(len(raw), -1), axis=1).min() >= 3  # grey paper going in
    ds = EtlDataset(root, preprocess=plain_preprocess(image_size=28), cache_dir=scratch_cache)
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
            ds = EtlDataset(root, preprocess=TINY, cache_dir=tmp_path / "c")
        assert len(ds) == 30 and ds.duplicates == 15 and ds.skipped == 0
        assert ds.writers.tolist() == src["sheet"].tolist()
        assert torch.equal(ds.images[:, 0], quantised(TINY(etl_levels_to_float(src["images"]))))
        [warning] = [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()]
        assert str(root) in warning and "dropped 15 duplicate records" in warning
    assert len(read_calls) == 1


@pytest.mark.parametrize("where", ["folder", "zip"])
def test_random_split_puts_no_copy_of_a_training_image_in_test(hiragana_folder, tmp_path, where):
    """The article's random split over a root that reads one file twice: without dropping the
    copies, most test images would also be training images."""
    src = hiragana_folder("あいうえおかきくけこ", writers=range(1, 11))  # 50 records a file
    root = _with_a_copy(src["root"], where, tmp_path)
    arrays = load_arrays(root, "hiragana71", plain_preprocess(image_size=28), cache_dir=tmp_path / "c")
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


def _float_images(arrays):  # the format before CACHE_VERSION 3
    arrays["images"] = arrays["images"].astype(np.float32) / 255


def _bigger_images(arrays):
    arrays["images"] = np.zeros((len(arrays["images"]), 10, 10), np.uint8)


def _float_writers(arrays):
    arrays["writers"] = arrays["writers"].astype(np.float32)


def _no_duplicates_count(arrays):  # a cache written before CACHE_VERSION 2 had none
    del arrays["duplicates"]


def write_entry(folder: Path, arrays: dict) -> None:
    """An entry as cached_arrays writes one: the images as .npy, the rest in arrays.npz."""
    folder.mkdir(parents=True)
    if "images" in arrays:
        np.save(folder / "images.npy", np.asarray(arrays["images"]))
    np.savez(folder / "arrays.npz", **{k: v for k, v in arrays.items() if k != "images"})


@pytest.mark.parametrize(
    "spoil",
    [_drop_labels, _short_labels, _flat_images, _float_images, _bigger_images, _float_writers, _no_duplicates_count],
)
def test_inconsistent_cache_entry_is_deleted_and_rewritten(hiragana_folder, tmp_path, read_calls, caplog, spoil):
    src = hiragana_folder("あいう", writers=[1, 2, 3])
    good = load_arrays(src["root"], "hiragana71", TINY, cache_dir=False)
    arrays = dict(good)
    spoil(arrays)
    params = {"class_set": "hiragana71", "preprocess": TINY.as_dict()}
    entry = tmp_path / "c" / cache_key(src["root"], params)  # where the code looks
    write_entry(entry, arrays)  # valid files, inconsistent inside

    with caplog.at_level(logging.WARNING, logger="maist.data.cache"):
        ds = EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")

    assert len(read_calls) == 2  # recomputed
    assert len(ds) == 9 and ds.targets.tolist() == good["labels"].tolist()
    assert torch.equal(ds.images[:, 0], torch.from_numpy(np.asarray(good["images"])))
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(entry) in warning.getMessage()
    assert entries(tmp_path / "c") == [entry]  # rewritten in place, and valid now
    rewritten = load_entry(entry)
    assert check_loaded(rewritten, image_size=8) is None and sorted(rewritten) == sorted(good)
    for key in good:
        np.testing.assert_array_equal(rewritten[key], good[key])
    EtlDataset(src["root"], preprocess=TINY, cache_dir=tmp_path / "c")
    assert len(read_calls) == 2  # a hit


def test_cache_validate_is_the_callers(hiragana_folder, tmp_path):
    """cached_arrays knows no keys: the caller's validate decides, and a rejected entry goes."""
    src = hiragana_folder("あ", writers=[1])
    calls = []

    def build(folder):
        calls.append(1)
        save_small(folder, a=np.arange(3))

    cached_arrays(src["root"], {"k": 1}, build, tmp_path / "c")
    [path] = entries(tmp_path / "c")
    cached_arrays(src["root"], {"k": 1}, build, tmp_path / "c", validate=lambda a: None)
    assert len(calls) == 1
    cached_arrays(src["root"], {"k": 1}, build, tmp_path / "c", validate=lambda a: None if "b" in a else "no b")
    assert len(calls) == 2 and entries(tmp_path / "c") == [path]
    assert check_arrays({"a": np.zeros((2, 3)), "n": np.array(1)}, {"a": 2}, ("n",)) is None
    assert (
        check_arrays({"a": np.zeros(2), "b": np.zeros(3)}, {"a": 1, "b": 1}) == "arrays of different lengths: a 2, b 3"
    )
    assert check_arrays({"a": np.zeros(2)}, {"a": 1}, ("n",)) == "missing n"


def test_a_record_is_a_copy_only_if_header_and_pixels_agree(make_records, tmp_path):
    """Same header, other pixels: two records. Same pixels, other header: two records. Both
    the same (a file read twice): one."""
    a, b = blob_images(2, seed=3)
    jis = [char_to_jis("あ")] * 2
    make_records(tmp_path / "etl", "ETL8G_01", jis=jis, sheet=1, serial=[7, 7], images=np.stack([a, b]))
    make_records(tmp_path / "etl", "ETL8G_02", jis=jis, sheet=2, serial=[8, 9], images=np.stack([a, a]))
    make_records(tmp_path / "etl", "ETL8G_03", jis=jis, sheet=1, serial=[7, 7], images=np.stack([b, a]))
    arrays = load_arrays(tmp_path / "etl", "hiragana71", TINY, cache_dir=False)
    assert int(arrays["duplicates"]) == 2 and arrays["writers"].tolist() == [1, 1, 2, 2]
    expected = quantised(TINY(etl_levels_to_float(np.stack([a, b, a, a])))).numpy()
    np.testing.assert_array_equal(arrays["images"], expected)


def test_warm_load_maps_the_cache(hiragana_folder, tmp_path):
    src = hiragana_folder("あいう", writers=[1, 2])
    load_arrays(src["root"], "hiragana71", TINY, cache_dir=tmp_path / "c")
    arrays = load_arrays(src["root"], "hiragana71", TINY, cache_dir=tmp_path / "c")
    images = arrays["images"]
    assert isinstance(images, np.memmap) and images.mode == "c" and images.dtype == np.uint8
    assert Path(images.filename) == entries(tmp_path / "c")[0] / "images.npy"
    assert images.offset == NPY_HEADER_BYTES and images.shape == (6, 8, 8)


def test_uint8_round_trip():
    x = torch.arange(256, dtype=torch.float32) / 255
    assert torch.equal(torch.from_numpy(to_uint8(x)), torch.arange(256, dtype=torch.uint8))
    assert torch.equal(to_float(torch.from_numpy(to_uint8(x))), x)
    assert to_uint8(torch.tensor([0.0, 0.5 / 255 - 1e-6, 0.5 / 255 + 1e-6, 1.0])).tolist() == [0, 0, 1, 255]
