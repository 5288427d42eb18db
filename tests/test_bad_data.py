"""Data that used to give silently wrong results, or hang, or exhaust memory: each is now refused
with one line naming the path and the fix, or reported, before anything is trained on it."""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import maist.data.etl as etl_mod
from maist.data.cache import cache_key
from maist.data.datamodule import MaistDataModule
from maist.data.dataset import load_arrays
from maist.data.etl import ETL8B2, EtlFormatError, list_sources, read_etl, write_etl
from maist.data.kana import char_to_jis
from maist.errors import ConfigError
from tests.helpers import plain_preprocess, run_python

TINY = plain_preprocess(image_size=8)


def datamodule(root, tmp_path, **kw) -> MaistDataModule:
    kw = {"image_size": 8, "preprocess": {"threshold": 0.0, "crop": False, "despeckle": 0}, **kw}
    return MaistDataModule(root=str(root), cache_dir=str(tmp_path / "c"), batch_size=4, **kw)


# ---------------------------------------------------------------- a test set that is a training set


def test_a_test_root_inside_the_root_is_refused_before_decoding(hiragana_folder, tmp_path):
    src = hiragana_folder("あいうえお", writers=range(1, 11))
    dm = datamodule(src["root"], tmp_path, test_root=str(src["root"] / "ETL8G_02"))
    with pytest.raises(ConfigError, match=r"data.test_root=.*ETL8G_02: shares 1 file\(s\) with data.root") as info:
        dm.setup()
    assert "\n" not in str(info.value)
    assert not (tmp_path / "c").exists(), "decoded before the roots were checked"


def test_copies_of_training_records_are_dropped_from_a_test_root(hiragana_folder, tmp_path, caplog):
    """test_root holds a copy of a training file (another path, so no shared file) and one file of
    its own: the copies leave the test set; records with a training image under another header are
    counted."""
    src = hiragana_folder("あいうえお", writers=range(1, 11))
    test_root = tmp_path / "test"
    test_root.mkdir()
    shutil.copy(src["root"] / "ETL8G_01", test_root / "ETL8G_01")  # 25 records, all training ones
    other = hiragana_folder("あいうえお", writers=range(20, 24), name="other", seed=9)
    shutil.copy(other["root"] / "ETL8G_01", test_root / "ETL8G_02")  # 10 records of their own
    raw = bytearray((src["root"] / "ETL8G_02").read_bytes()[: etl_mod.ETL8G.record_size])
    raw[12:16] = (999).to_bytes(4, "big")  # a training record's pixels under another serial number
    (test_root / "ETL8G_03").write_bytes(bytes(raw))
    dm = datamodule(src["root"], tmp_path, test_root=str(test_root), split_by="random")
    with caplog.at_level(logging.WARNING, logger="maist.data.datamodule"):
        dm.setup()
    assert len(dm.test_set) == 10 + 1
    (warning,) = [r.getMessage() for r in caplog.records if "test_root" in r.getMessage()]
    assert "25 of its 36 records are also under data.root" in warning and "1 more have the pixels" in warning


def test_records_with_the_same_pixels_under_another_header_are_counted(make_records, tmp_path, caplog):
    a, b = np.random.default_rng(0).integers(0, 16, (2, 127, 128), dtype=np.uint8)
    jis = [char_to_jis("あ")] * 3
    make_records(tmp_path / "etl", "ETL8G_01", jis=jis, sheet=[1, 2, 3], images=np.stack([a, b, a]))
    recs = read_etl(tmp_path / "etl")
    assert (len(recs), recs.duplicates, recs.same_pixels) == (3, 0, 1)
    with caplog.at_level(logging.WARNING):
        arrays = load_arrays(tmp_path / "etl", "hiragana71", TINY, cache_dir=False)
    assert int(arrays["same_pixels"]) == 1 and "1 records have the pixels of another record" in caplog.text


# ---------------------------------------------------------------- paths that are not files


def test_a_symlinked_sub_folder_is_read_and_a_loop_is_not(make_records, tmp_path):
    make_records(tmp_path / "real", "ETL8G_01", jis=[char_to_jis("あ")] * 2, sheet=1)
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real" / "back").symlink_to(root, target_is_directory=True)  # a loop
    sources = list_sources(root)
    assert [Path(s.path).name for s in sources] == ["ETL8G_01"]
    assert len(read_etl(root)) == 2


@pytest.mark.parametrize("kind", ["fifo", "device", "dangling link"])
def test_what_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path, kind):
    path = tmp_path / "ETL8G_01"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        path.symlink_to(tmp_path / "gone")
    for root in (path, tmp_path):  # the file itself, and a folder holding it
        probe = f"from maist.data.etl import read_etl\nread_etl({str(root)!r})"
        proc = run_python("-c", probe, timeout=60)
        assert proc.returncode != 0 and "EtlFormatError" in proc.stderr, proc.stderr[-500:]
        what = {"fifo": "a pipe", "device": "a device", "dangling link": "cannot be read (a link to nothing)"}[kind]
        assert f"{path}: {what}" in proc.stderr


def test_a_zip_member_larger_than_any_etl_file_is_refused_unread(tmp_path, monkeypatch, make_records):
    """A 'zip bomb' (a member declared far larger than any ETL file) is refused from the zip's
    index; a member is inflated a chunk of records at a time, never whole."""
    monkeypatch.setattr(etl_mod, "MAX_FILE_BYTES", 1_000_000)
    archive = tmp_path / "ETL8G.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ETL8G/ETL8G_01", bytes(etl_mod.ETL8G.record_size * 200))  # 1.6 MB of zeros, a few KB zipped
    with pytest.raises(EtlFormatError, match=r"ETL8G.zip!ETL8G/ETL8G_01: 2 MB is larger than any ETL file"):
        read_etl(archive)
    reads = []
    real = etl_mod.Source.chunks
    monkeypatch.setattr(etl_mod.Source, "chunks", lambda self, n: (reads.append(len(c)) or c for c in real(self, n)))
    monkeypatch.setattr(etl_mod, "MAX_FILE_BYTES", 128 * 1024**2)
    src = make_records(tmp_path / "src", "ETL8G_01", jis=[char_to_jis("あ")] * 5, sheet=1)
    with zipfile.ZipFile(tmp_path / "small.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(src["path"], "ETL8G_01")
    assert len(etl_mod.read_etl(tmp_path / "small.zip")) == 5
    monkeypatch.setattr(etl_mod, "CHUNK_RECORDS", 2)
    assert len(list(etl_mod.iter_chunks(list_sources(tmp_path / "small.zip")[0], chunk=2))) == 3


# ---------------------------------------------------------------- B-type dummy records


def test_a_b_type_file_without_its_dummy_is_reported(tmp_path, caplog):
    images = np.zeros((3, 63, 64), np.uint8)
    images[:, 20:40, 20:40] = 1
    jis = [char_to_jis(c) for c in "あいう"]
    with_dummy = tmp_path / "a" / "ETL8B2C1"
    write_etl(with_dummy, ETL8B2, images, jis, [1, 1, 1])
    with caplog.at_level(logging.WARNING, logger="maist.data.etl"):
        assert len(read_etl(with_dummy)) == 3
    assert not caplog.records
    without = tmp_path / "b" / "ETL8B2C1"
    without.parent.mkdir()
    without.write_bytes(with_dummy.read_bytes()[ETL8B2.record_size :])  # re-packed without the dummy
    with caplog.at_level(logging.WARNING, logger="maist.data.etl"):
        assert len(read_etl(without)) == 2
    assert "its first record, skipped as ETL8B2's dummy record, looks like a character (JIS 0x2422" in caplog.text


# ---------------------------------------------------------------- caches and splits


@pytest.mark.parametrize("change", ["minus one", "shifted"])
def test_a_cache_whose_labels_are_not_the_class_sets_is_rebuilt(hiragana_folder, tmp_path, caplog, change):
    src = hiragana_folder("あいう", writers=[1, 2])
    good = load_arrays(src["root"], "hiragana71", TINY, cache_dir=tmp_path / "c")
    entry = tmp_path / "c" / cache_key(src["root"], {"class_set": "hiragana71", "preprocess": TINY.as_dict()})
    with np.load(entry / "arrays.npz") as npz:
        small = {k: npz[k] for k in npz.files}
    small["labels"] = np.full_like(small["labels"], -1) if change == "minus one" else small["labels"] + 1
    np.savez(entry / "arrays.npz", **small)
    with caplog.at_level(logging.WARNING):
        again = load_arrays(src["root"], "hiragana71", TINY, cache_dir=tmp_path / "c")
    assert "deleting bad cache entry" in caplog.text and "labels that are not class set hiragana71's" in caplog.text
    assert again["labels"].tolist() == good["labels"].tolist()


def test_a_writer_split_of_one_writer_is_one_line(hiragana_folder, tmp_path):
    src = hiragana_folder("あいう", writers=[1])
    with pytest.raises(ConfigError, match="data.split_by=writer: 1 writer is too few to split") as info:
        datamodule(src["root"], tmp_path).setup()
    assert "\n" not in str(info.value) and "data.split_by=random" in str(info.value)
