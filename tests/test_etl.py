"""maist.data.etl: the ETL8G and ETL9G record layouts, decoding, sources and every bad input.

The other layouts (ETL8B2, ETL9B, ETL1/6/7) and mixed folders: tests/test_formats.py.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_images, etl_dev_set

from maist.data.etl import (
    ETL8G,
    ETL9G,
    EtlFormatError,
    RecordCheck,
    Source,
    filled_array,
    g_type_content,
    iter_chunks,
    list_sources,
    pack_records,
    read_etl,
    record_dtype,
    write_etl,
)
from maist.data.kana import HIRAGANA71, char_to_jis, class_set, jis_to_char

# The published layout (docs/etl-format.md), used here independently of maist's dtype.
STRUCT_FORMAT = ">2H8sI4B4H2B30x8128s11x"
H, W = 127, 128
A, I, U, KA = (char_to_jis(c) for c in "あいうか")
KANJI = [0x3021, 0x3022, 0x4E3F]  # 亜 唖 and a kanji from the middle of the table


def blank_pixels() -> list[list[int]]:
    return [[0] * W for _ in range(H)]


def pack_image_by_hand(pixels: list[list[int]]) -> bytes:
    """Row by row, two pixels per byte, high nibble first (plain Python, no numpy)."""
    out = bytearray()
    for row in pixels:
        assert len(row) == W
        for c in range(0, W, 2):
            out.append((row[c] << 4) | row[c + 1])
    assert len(out) == 8128
    return bytes(out)


def hand_record(*, sheet, jis, serial, pixels, reading=b"        ", fields=(0,) * 10) -> bytes:
    """One ETL8G record with struct: sheet, jis, reading, serial, 4B, 4H, 2B, image."""
    return struct.pack(STRUCT_FORMAT, sheet, jis, reading, serial, *fields, pack_image_by_hand(pixels))


# ---------------------------------------------------------------- layout


def test_record_dtype_matches_the_published_layout():
    assert ETL8G.record_size == struct.calcsize(STRUCT_FORMAT) == ETL8G.dtype.itemsize == 8199
    offsets = {name: ETL8G.dtype.fields[name][1] for name in ETL8G.dtype.names}
    # 1-based byte positions in docs/etl-format.md, minus one.
    assert offsets["sheet"] == 0
    assert offsets["jis"] == 2
    assert offsets["reading"] == 4
    assert offsets["serial"] == 12
    assert offsets["eval_image"] == 16
    assert offsets["industry"] == 20
    assert offsets["pos_y"] == 28
    assert offsets["image"] == 60
    assert ETL8G.dtype["sheet"].byteorder == ">" and ETL8G.dtype["serial"].byteorder == ">"


def test_hand_packed_records_decode_to_exact_pixels_and_fields(tmp_path):
    first = blank_pixels()
    first[0][0], first[0][1] = 15, 0  # first image byte: 0xF0
    first[0][127] = 7  # last pixel of row 0: low nibble of byte 63
    first[1][0] = 9  # first pixel of row 1: high nibble of byte 64
    first[63][64], first[63][65] = 3, 14
    first[126][126], first[126][127] = 12, 5  # last image byte: 0xC5
    second = blank_pixels()
    for r in range(H):
        for c in range(W):
            second[r][c] = (r * 7 + c * 3) % 16
    raw1 = hand_record(
        sheet=0x0102,
        jis=A,
        serial=0x01020304,
        pixels=first,
        reading=b"A.HIRA  ",
        fields=(1, 2, 1, 25, 3, 4, 5, 6, 7, 8),
    )
    raw2 = hand_record(sheet=2000, jis=0x3021, serial=77, pixels=second)
    assert len(raw1) == len(raw2) == ETL8G.record_size
    assert raw1[60] == 0xF0
    assert raw1[60 + 63] == 0x07
    assert raw1[60 + 64] == 0x90
    assert raw1[60 + 8127] == 0xC5 and raw1[8188:] == bytes(11)
    path = tmp_path / "ETL8G_01"
    path.write_bytes(raw1 + raw2)

    recs = read_etl(path)

    assert len(recs) == 2 and recs.skipped == 0
    assert recs.images.shape == (2, H, W) and recs.images.dtype == np.uint8
    img = recs.images[0]
    assert img[0, 0] == 15 and img[0, 1] == 0
    assert img[0, 127] == 7 and img[0, 126] == 0
    assert img[1, 0] == 9 and img[1, 1] == 0
    assert img[63, 64] == 3 and img[63, 65] == 14
    assert img[126, 126] == 12 and img[126, 127] == 5
    assert np.count_nonzero(img) == 7  # nothing else lit
    np.testing.assert_array_equal(recs.images[0], np.array(first))
    np.testing.assert_array_equal(recs.images[1], np.array(second))
    # Big-endian header fields (little-endian would read 0x0201 and 0x04030201).
    assert recs.sheet.tolist() == [0x0102, 2000]
    assert recs.jis.tolist() == [A, 0x3021]
    assert recs.serial.tolist() == [0x01020304, 77]
    assert recs.files == (str(path),)
    # The other header fields, through the structured dtype.
    head = np.frombuffer(raw1, dtype=ETL8G.dtype)[0]
    assert head["reading"] == b"A.HIRA  "
    assert (head["eval_image"], head["eval_group"], head["sex"], head["age"]) == (1, 2, 1, 25)
    assert (head["industry"], head["occupation"], head["gathered"], head["scanned"]) == (3, 4, 5, 6)
    assert (head["pos_y"], head["pos_x"]) == (7, 8)


def test_pack_records_matches_struct_byte_for_byte():
    pixels = blank_pixels()
    pixels[0][0], pixels[0][127], pixels[1][0], pixels[126][127] = 15, 1, 2, 3
    expected = hand_record(sheet=1234, jis=U, serial=99, pixels=pixels, reading=b"U.HIRA  ")
    got = pack_records(np.array([pixels]), [U], [1234], [99], [b"U.HIRA  "])
    assert got == expected


def test_nibble_order_is_high_first_on_every_byte(tmp_path):
    raw = struct.pack(STRUCT_FORMAT, 1, A, b"", 1, *(0,) * 10, bytes([0x1E]) * 8128)
    (tmp_path / "ETL8G_01").write_bytes(raw)
    img = read_etl(tmp_path).images[0]
    assert (img[:, 0::2] == 1).all() and (img[:, 1::2] == 14).all()


def test_pack_records_rejects_bad_images():
    with pytest.raises(ValueError, match="127"):
        pack_records(np.zeros((1, 128, 127), np.uint8), [A], [1])
    with pytest.raises(ValueError, match="0..15"):
        pack_records(np.full((1, H, W), 16, np.uint8), [A], [1])


# ---------------------------------------------------------------- round trip and order


def test_pack_and_read_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    n = 37
    images = rng.integers(0, 16, size=(n, H, W), dtype=np.uint8)
    jis = rng.choice([A, I, U, KA, *KANJI], size=n)
    sheet = rng.integers(1, 65535, size=n)
    serial = rng.integers(0, 2**32 - 1, size=n, dtype=np.int64)
    write_etl(tmp_path / "ETL8G_01", ETL8G, images, jis, sheet, serial)
    assert (tmp_path / "ETL8G_01").stat().st_size == n * ETL8G.record_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ETL8G_01"]  # no temporary left

    recs = read_etl(tmp_path / "ETL8G_01")

    np.testing.assert_array_equal(recs.images, images)
    np.testing.assert_array_equal(recs.jis, jis)
    np.testing.assert_array_equal(recs.sheet, sheet)
    np.testing.assert_array_equal(recs.serial, serial)


@pytest.mark.parametrize("codes", [None, [A, U], [A, I, U, KA, *KANJI]])  # none, some, every record kept
def test_scratch_chunks_reuse_one_buffer_and_hold_the_same_images(tmp_path, codes):
    rng = np.random.default_rng(4)
    n = 23
    images = rng.integers(0, 16, size=(n, H, W), dtype=np.uint8)
    jis = rng.choice([A, I, U, KA, *KANJI], size=n)
    write_etl(tmp_path / "ETL8G_01", ETL8G, images, jis, np.arange(n) + 1)
    (src,) = list_sources(tmp_path)
    wanted = None if codes is None else np.array(codes, np.int32)

    fresh = [c.images.copy() for c in iter_chunks(src, wanted, chunk=5)]
    reused, buffers = [], []
    for c in iter_chunks(src, wanted, chunk=5, scratch=True):
        reused.append(c.images.copy())  # valid until the next chunk: taken now
        buffers.append(c.images)

    keep = np.ones(n, bool) if codes is None else np.isin(jis, codes)
    np.testing.assert_array_equal(np.concatenate(fresh), images[keep])
    np.testing.assert_array_equal(np.concatenate(reused), images[keep])
    assert len(fresh) == len(reused) == 5
    assert all(np.shares_memory(buffers[0], b) for b in buffers if len(b))  # no new memory a chunk


@pytest.mark.parametrize("shape", [(3, 5), (40, 127, 128), (1000, 127, 128)])  # below and above the mapped size
def test_filled_array_is_a_writable_array_of_its_shape(shape):
    a = filled_array(shape)
    assert a.shape == shape and a.dtype == np.uint8 and a.flags.writeable and a.flags.c_contiguous
    a[...] = 7
    assert int(a.sum()) == 7 * a.size


def test_folder_reads_files_in_name_order_and_ignores_other_files(tmp_path, make_records):
    # Written out of order; ETL8INFO and other names must be ignored.
    second = make_records(tmp_path, "ETL8G_02", jis=[KA, 0x3021], sheet=[2, 2], seed=2)
    first = make_records(tmp_path, "ETL8G_01", jis=[A, I, U], sheet=[1, 1, 1], seed=1)
    (tmp_path / "ETL8INFO").write_bytes(b"ETL8G information\r\n" * 7)
    (tmp_path / "ETL8G_01.bak").write_bytes(b"x" * 100)
    (tmp_path / "readme.txt").write_text("not records")

    recs = read_etl(tmp_path)

    assert recs.files == (str(first["path"]), str(second["path"]))
    assert recs.jis.tolist() == [A, I, U, KA, 0x3021]
    assert recs.sheet.tolist() == [1, 1, 1, 2, 2]
    np.testing.assert_array_equal(recs.images, np.concatenate([first["images"], second["images"]]))


def test_folder_is_searched_recursively(tmp_path, make_records):
    rec = make_records(tmp_path / "ETL8G", "ETL8G_01", jis=[A, I], sheet=1)
    recs = read_etl(tmp_path)
    assert recs.files == (str(rec["path"]),)
    assert recs.jis.tolist() == [A, I]


def test_single_file_of_any_name(tmp_path, make_records):
    rec = make_records(tmp_path, "my-records.bin", jis=[U, A], sheet=[5, 6])
    recs = read_etl(rec["path"])
    assert recs.jis.tolist() == [U, A] and recs.sheet.tolist() == [5, 6]


def _zip_with(path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(name, data)
    return path


def test_zip_with_members_in_a_subfolder(tmp_path, make_records):
    src = tmp_path / "src"
    first = make_records(src, "ETL8G_01", jis=[A, 0x3021, I], sheet=10, seed=1)
    second = make_records(src, "ETL8G_02", jis=[U, KA], sheet=11, seed=2)
    archive = _zip_with(
        tmp_path / "ETL8G.zip",
        {
            "ETL8G/": b"",
            "ETL8G/ETL8INFO": b"info " * 300,
            "ETL8G/ETL8G_02": second["path"].read_bytes(),  # stored before _01
            "ETL8G/ETL8G_01": first["path"].read_bytes(),
        },
    )

    recs = read_etl(archive)

    assert recs.files == (f"{archive}!ETL8G/ETL8G_01", f"{archive}!ETL8G/ETL8G_02")
    assert recs.jis.tolist() == [A, 0x3021, I, U, KA]
    assert recs.sheet.tolist() == [10, 10, 10, 11, 11]
    np.testing.assert_array_equal(recs.images, np.concatenate([first["images"], second["images"]]))
    assert [s.member for s in list_sources(archive)] == ["ETL8G/ETL8G_01", "ETL8G/ETL8G_02"]


def test_zip_without_zip_suffix_is_still_read_as_zip(tmp_path, make_records):
    rec = make_records(tmp_path / "src", "ETL8G_01", jis=[A, I], sheet=3)
    archive = _zip_with(tmp_path / "download", {"ETL8G/ETL8G_01": rec["path"].read_bytes()})
    assert read_etl(archive).jis.tolist() == [A, I]


# ---------------------------------------------------------------- jis subset


def test_jis_subset_keeps_only_those_records_in_order(tmp_path, make_records):
    jis = [A, 0x3021, I, KA, 0x3022, A, U, 0x4E3F]
    rec = make_records(tmp_path, "ETL8G_01", jis=jis, sheet=list(range(100, 108)))
    make_records(tmp_path, "ETL8G_02", jis=[0x3021, 0x3021], sheet=200, seed=5)

    recs = read_etl(tmp_path, codes={A, U})

    keep = [0, 5, 6]
    assert recs.jis.tolist() == [A, A, U]
    assert recs.sheet.tolist() == [100, 105, 106]
    np.testing.assert_array_equal(recs.images, rec["images"][keep])
    assert recs.skipped == 5 + 2
    assert len(recs.files) == 2  # both files were read, even the one with nothing kept


@pytest.mark.parametrize(
    "codes",
    [
        [A, U],
        np.array([A, U]),
        {A: 0, U: 1},  # a class set's jis_to_label mapping
        (c for c in (A, U)),
    ],
)
def test_jis_subset_accepts_any_collection(tmp_path, make_records, codes):
    make_records(tmp_path, "ETL8G_01", jis=[A, I, U, 0x3021], sheet=1)
    recs = read_etl(tmp_path, codes=codes)
    assert recs.jis.tolist() == [A, U] and recs.skipped == 2


def test_jis_subset_that_matches_nothing(tmp_path, make_records):
    make_records(tmp_path, "ETL8G_01", jis=KANJI, sheet=1)
    recs = read_etl(tmp_path, codes=class_set("hiragana71").jis_to_label)
    assert len(recs) == 0 and recs.skipped == 3
    assert recs.images.shape == (0, H, W)


# ---------------------------------------------------------------- bad inputs


def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-ETL8G"
    with pytest.raises(FileNotFoundError, match="no-such-ETL8G"):
        read_etl(missing)


def test_empty_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(EtlFormatError) as err:
        read_etl(folder)
    assert str(folder) in str(err.value) and "ETL8G_nn" in str(err.value)


def test_folder_without_etl8g_files(tmp_path):
    (tmp_path / "ETL8INFO").write_text("info")
    (tmp_path / "ETL9G_01").write_bytes(bytes(ETL8G.record_size))
    (tmp_path / "ETL8G.txt").write_text("x")
    with pytest.raises(EtlFormatError) as err:
        read_etl(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_empty_file(tmp_path, make_records):
    make_records(tmp_path, "ETL8G_01", jis=[A], sheet=1)
    (tmp_path / "ETL8G_02").write_bytes(b"")
    with pytest.raises(EtlFormatError) as err:
        read_etl(tmp_path)
    assert str(tmp_path / "ETL8G_02") in str(err.value) and "empty" in str(err.value)


@pytest.mark.parametrize("delta", [-1, -4000, +1, +8198])
def test_file_that_is_not_whole_records(tmp_path, make_records, delta):
    rec = make_records(tmp_path, "ETL8G_01", jis=[A, I, U], sheet=1)
    raw = rec["path"].read_bytes()
    bad = raw[:delta] if delta < 0 else raw + bytes(delta)
    rec["path"].write_bytes(bad)
    with pytest.raises(EtlFormatError) as err:
        read_etl(rec["path"])
    msg = str(err.value)
    assert str(rec["path"]) in msg
    assert "truncated" in msg and "download" in msg.lower()
    assert f"{len(bad):,}" in msg


@pytest.mark.parametrize("name", ["ETL8G.zip", "ETL8G_download"])
def test_truncated_zip(tmp_path, make_records, name):
    rec = make_records(tmp_path / "src", "ETL8G_01", jis=[A, I, U, KA], sheet=1)
    good = _zip_with(tmp_path / "good.zip", {"ETL8G/ETL8G_01": rec["path"].read_bytes(), "ETL8G/ETL8INFO": b"info"})
    data = good.read_bytes()
    cut = len(data) // 2
    if cut % ETL8G.record_size == 0:
        cut -= 1
    bad = tmp_path / name
    bad.write_bytes(data[:cut])
    with pytest.raises(EtlFormatError) as err:
        read_etl(bad)
    msg = str(err.value)
    assert str(bad) in msg and "download" in msg.lower()


def test_zip_member_with_bad_crc(tmp_path, make_records):
    rec = make_records(tmp_path / "src", "ETL8G_01", jis=[A, I], sheet=1)
    raw = rec["path"].read_bytes()
    archive = _zip_with(tmp_path / "ETL8G.zip", {"ETL8G/ETL8G_01": raw}, zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    at = bytes(data).find(raw) + ETL8G.record_size + 500  # inside the second record's image
    data[at] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(EtlFormatError) as err:
        read_etl(archive)
    assert str(archive) in str(err.value) and "ETL8G/ETL8G_01" in str(err.value)


def test_zip_without_record_files(tmp_path):
    archive = _zip_with(
        tmp_path / "ETL9G.zip", {"ETL9G/ETL9INFO": b"info", "ETL9G/ETL9G_01.txt": bytes(ETL8G.record_size)}
    )
    with pytest.raises(EtlFormatError) as err:
        read_etl(archive)
    assert str(archive) in str(err.value) and "ETL8G_nn" in str(err.value)


# ---------------------------------------------------------------- real internal data
# Real handwriting re-packed as ETL8G records (docs/etl-format.md, ../shared/data/etl-dev/).
# The counts are the ones measured on that material.

BASIC46 = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"


@pytest.fixture(scope="module")
def etl8b2(etl_dev):
    return read_etl(etl_dev_set(etl_dev, "etl8b2-46"))


@pytest.fixture(scope="module")
def etl4c(etl_dev):
    return read_etl(etl_dev_set(etl_dev, "etl4c-46"))


def test_basic46_is_hiragana71_without_voiced_marks():
    assert len(BASIC46) == 46 and set(BASIC46) <= set(HIRAGANA71)


def test_etl8b2_46_counts(etl8b2):
    assert len(etl8b2) == 7312 and etl8b2.skipped == 0
    assert len(etl8b2.files) == 2 and [f[-8:] for f in etl8b2.files] == ["ETL8G_01", "ETL8G_02"]
    assert etl8b2.images.shape == (7312, H, W)
    assert "".join(sorted({jis_to_char(int(j)) for j in etl8b2.jis}, key=char_to_jis)) == BASIC46
    assert set(np.unique(etl8b2.jis).tolist()) <= set(class_set("hiragana71").jis_to_label)
    writers = np.unique(etl8b2.sheet)
    assert len(writers) == 160
    assert writers.tolist() == list(range(1000, 1160))
    per_class = Counter(etl8b2.jis.tolist())
    assert min(per_class.values()) == 156 and max(per_class.values()) == 160
    per_writer = Counter(etl8b2.sheet.tolist())
    assert max(per_writer.values()) == 46 and sum(v == 46 for v in per_writer.values()) == 141


def test_etl8b2_46_is_mostly_binary(etl8b2):
    # Mostly 0 and 15, with some intermediate levels (edges left by size normalisation).
    images = etl8b2.images
    assert images.min() == 0 and images.max() == 15
    assert ((images == 0).sum() + (images == 15).sum()) / images.size > 0.9
    counts = np.bincount(images[:500].ravel(), minlength=16)
    assert counts.argmax() == 0 and np.argsort(counts)[-2] == 15
    assert np.median(images[:200].reshape(200, -1), axis=1).max() == 0  # paper is 0


def test_etl4c_46_counts(etl4c):
    assert len(etl4c) == 5880 and etl4c.skipped == 0
    assert "".join(sorted({jis_to_char(int(j)) for j in etl4c.jis}, key=char_to_jis)) == BASIC46
    assert set(np.unique(etl4c.jis).tolist()) <= set(class_set("hiragana71").jis_to_label)
    writers = np.unique(etl4c.sheet)
    assert writers.tolist() == list(range(5001, 5121))  # 120 writers
    assert set(Counter(etl4c.sheet.tolist()).values()) == {49}  # い う え twice per sheet
    per_class = Counter(jis_to_char(j) for j in etl4c.jis.tolist())
    assert {c for c, k in per_class.items() if k == 240} == set("いうえ")
    assert all(k == 120 for c, k in per_class.items() if c not in "いうえ")


def test_etl4c_46_levels_are_light(etl4c):
    images = etl4c.images
    assert images.min() == 2 and images.max() == 9  # never paper-white 0, never ink above 9
    assert np.flatnonzero(np.bincount(images[:500].ravel(), minlength=16)).tolist() == list(range(2, 10))
    paper = np.median(images[:300].reshape(300, -1), axis=1)
    assert 3 <= paper.min() and paper.max() <= 4  # grey paper, well above 0


def test_etl_dev_sets_are_all_hiragana71(etl_dev):
    """What EtlDataset selects with the default class set: every record, nothing skipped."""
    codes = class_set("hiragana71").jis_to_label
    for name, n in (("etl8b2-46", 7312), ("etl4c-46", 5880)):
        root = etl_dev_set(etl_dev, name)
        assert [s.path.name for s in list_sources(root)] == ["ETL8G_01", "ETL8G_02"]
        assert [p.stat().st_size for p in sorted(root.glob("ETL8G_*"))] == [n // 2 * ETL8G.record_size] * 2
        recs = read_etl(root, codes=codes)
        assert (len(recs), recs.skipped) == (n, 0)


def test_decoding_agrees_with_pils_4_bit_decoder(tmp_path):
    """The decoder most published ETL loaders use, record by record: struct + PIL 'bit' 4."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(11)
    images = rng.integers(0, 16, size=(6, H, W), dtype=np.uint8)
    write_etl(tmp_path / "ETL8G_01", ETL8G, images, [A, I, U, KA, *KANJI[:2]], range(300, 306))
    raw = (tmp_path / "ETL8G_01").read_bytes()
    recs = read_etl(tmp_path)
    for k in range(6):
        fields = struct.unpack(STRUCT_FORMAT, raw[k * ETL8G.record_size : (k + 1) * ETL8G.record_size])
        pil = np.asarray(Image.frombytes("F", (W, H), fields[14], "bit", 4))
        np.testing.assert_array_equal(recs.images[k], pil)
        assert (recs.sheet[k], recs.jis[k], recs.serial[k]) == (fields[0], fields[1], fields[3])


# ---------------------------------------------------------------- duplicate records


def test_copy_in_a_subfolder_is_read_once(tmp_path, make_records):
    rec = make_records(tmp_path, "ETL8G_01", jis=[A, I, U, KA, 0x3021], sheet=[1, 1, 2, 2, 2])
    copy = tmp_path / "backup" / "ETL8G_01"
    copy.parent.mkdir()
    copy.write_bytes(rec["path"].read_bytes())

    recs = read_etl(tmp_path)

    assert recs.files == (str(rec["path"]), str(copy))  # both read ...
    assert recs.duplicates == 5  # ... the second dropped whole
    np.testing.assert_array_equal(recs.images, rec["images"])
    assert recs.jis.tolist() == [A, I, U, KA, 0x3021] and recs.sheet.tolist() == [1, 1, 2, 2, 2]
    assert recs.serial.tolist() == [1, 2, 3, 4, 5]
    # With a JIS filter only the kept records count as duplicates; the others are skipped.
    kept = read_etl(tmp_path, codes={A, U})
    assert (kept.jis.tolist(), kept.skipped, kept.duplicates) == ([A, U], 3 + 3, 2)


def test_two_identical_files_keep_the_first(tmp_path, make_records):
    first = make_records(tmp_path, "ETL8G_01", jis=[A, I, U], sheet=1, seed=1)
    (tmp_path / "ETL8G_02").write_bytes(first["path"].read_bytes())
    third = make_records(tmp_path, "ETL8G_03", jis=[KA], sheet=2, seed=3)
    recs = read_etl(tmp_path)
    assert len(recs.files) == 3 and recs.duplicates == 3
    assert recs.jis.tolist() == [A, I, U, KA] and recs.sheet.tolist() == [1, 1, 1, 2]
    np.testing.assert_array_equal(recs.images, np.concatenate([first["images"], third["images"]]))


def test_zip_with_the_same_member_under_two_paths(tmp_path, make_records):
    rec = make_records(tmp_path / "src", "ETL8G_01", jis=[A, I, U], sheet=7)
    raw = rec["path"].read_bytes()
    archive = _zip_with(tmp_path / "ETL8G.zip", {"ETL8G/ETL8G_01": raw, "old/ETL8G_01": raw})
    recs = read_etl(archive)
    assert recs.files == (f"{archive}!ETL8G/ETL8G_01", f"{archive}!old/ETL8G_01")
    assert recs.duplicates == 3 and recs.jis.tolist() == [A, I, U]
    np.testing.assert_array_equal(recs.images, rec["images"])


def test_duplicates_are_whole_records_and_the_first_is_kept(tmp_path):
    images = blob_images(4, seed=4)
    one_pixel = images[0].copy()
    one_pixel[126, 127] ^= 1  # differs from record 0 in its very last pixel
    recs = [  # (image, jis, sheet, serial)
        (images[0], A, 1, 1),
        (images[1], I, 1, 2),
        (images[0], A, 1, 1),  # = record 0
        (images[0], A, 1, 9),  # other serial number
        (images[0], A, 2, 1),  # other sheet
        (one_pixel, A, 1, 1),  # other last pixel
        (images[1], I, 1, 2),  # = record 1
        (images[0], A, 1, 1),  # = record 0 again
    ]
    raw = b"".join(pack_records(img[None], [j], [s], [n]) for img, j, s, n in recs)
    path = tmp_path / "ETL8G_01"
    path.write_bytes(raw)

    got = read_etl(path)

    kept = [0, 1, 3, 4, 5]
    assert got.duplicates == 3
    assert got.serial.tolist() == [recs[k][3] for k in kept]
    assert got.sheet.tolist() == [recs[k][2] for k in kept]
    np.testing.assert_array_equal(got.images, np.array([recs[k][0] for k in kept]))
    # A difference in the unused bytes counts too: the records are not the same bytes.
    other = bytearray(raw[: ETL8G.record_size])
    other[-1] = 1
    path.write_bytes(raw[: ETL8G.record_size] + bytes(other))
    assert (len(read_etl(path)), read_etl(path).duplicates) == (2, 0)


def test_images_with_the_same_words_in_another_order_are_told_apart(tmp_path):
    """Same header, and images whose 8-byte words are the same but moved (equal word sums): two
    records, each kept once."""
    base = blob_images(1, seed=8)[0]
    swapped = base.copy()
    swapped[0, :16], swapped[1, :16] = base[1, :16], base[0, :16]
    assert not np.array_equal(base, swapped)
    images = np.array([base, swapped, swapped, base, swapped])
    path = tmp_path / "ETL8G_01"
    path.write_bytes(pack_records(images, [A] * 5, [1] * 5, [1] * 5))
    recs = read_etl(path)
    assert recs.duplicates == 3
    np.testing.assert_array_equal(recs.images, images[:2])


# ---------------------------------------------------------------- ETL9G, and ETL8G/ETL9G mix-ups
# AIST's ETL9 "G-type" format page: the same 8,199 bytes as ETL8G, the image at bytes 65–8192.

ETL9G_STRUCT = ">2H8sI4B4H2B34x8128s7x"


def pack_etl9g(images: np.ndarray, jis, sheet) -> bytes:
    """ETL9G records, packed with struct (independently of maist's dtypes)."""
    out = []
    for k, img in enumerate(images):
        packed = ((img[:, 0::2] << 4) | img[:, 1::2]).astype(np.uint8).tobytes()
        out.append(struct.pack(ETL9G_STRUCT, sheet[k], jis[k], b"A.HIRA  ", k + 1, *(0,) * 10, packed))
    return b"".join(out)


def edge_ink_images(n: int) -> np.ndarray:
    """Blob images with ink in the corners (top-left and bottom-right), as a frame or noise gives."""
    images = blob_images(n, seed=9)
    images[:, :3, :10] = 12
    images[:, -3:, -10:] = 12
    return images


def test_etl9g_layout_is_aists():
    assert struct.calcsize(ETL9G_STRUCT) == ETL8G.record_size == record_dtype(ETL9G).itemsize
    assert record_dtype(ETL9G).fields["image"][1] == ETL9G.image_offset == 64
    assert record_dtype(ETL8G).fields["image"][1] == ETL8G.image_offset == 60
    assert ETL9G.image_end == 8192 and ETL8G.image_end == 8188
    assert record_dtype(ETL8G) == ETL8G.dtype
    images = edge_ink_images(2)
    raw = pack_etl9g(images, [A, I], [1, 2])
    recs = np.frombuffer(raw, dtype=record_dtype(ETL9G))
    assert recs["jis"].tolist() == [A, I]
    assert raw[60:64] == bytes(4) and raw[8188:8192] == bytes([0xCC] * 4)  # bottom-right ink


def test_etl9g_files_are_read_by_name(tmp_path):
    images = edge_ink_images(6)
    raw = pack_etl9g(images, [A, I, U, KA, 0x3021, 0x4F53], [1, 1, 1, 2, 2, 2])
    folder = tmp_path / "ETL9G"
    folder.mkdir()
    (folder / "ETL9G_01").write_bytes(raw[: 3 * ETL8G.record_size])
    (folder / "ETL9G_02").write_bytes(raw[3 * ETL8G.record_size :])
    (folder / "ETL9INFO").write_text("info")
    archive = _zip_with(tmp_path / "ETL9G.zip", {"ETL9G/ETL9G_01": raw})
    for root in (folder, folder / "ETL9G_01", archive):
        recs = read_etl(root)
        n = len(recs)
        assert recs.layout == "ETL9G" and recs.max_level == 15
        np.testing.assert_array_equal(recs.images, images[:n])
        assert recs.jis.tolist() == [A, I, U, KA, 0x3021, 0x4F53][:n]
        assert recs.serial.tolist() == list(range(1, n + 1))
    assert len(read_etl(folder)) == 6


def _refused(path, looks_like: str) -> str:
    with pytest.raises(EtlFormatError) as err:
        read_etl(path)
    msg = str(err.value)
    assert "\n" not in msg and f"looks like an {looks_like} file" in msg
    return msg


@pytest.mark.parametrize("name", ["ETL8G_01", "records.bin"])
def test_etl8g_named_file_with_etl9g_records_is_refused(tmp_path, name):
    """By content: a file read as ETL8G (by its name, or any other name) whose images sit
    where ETL9G keeps them; in a folder and in a zip too."""
    path = tmp_path / name
    path.write_bytes(pack_etl9g(edge_ink_images(6), [A, I, U, KA, A, I], [1, 1, 1, 1, 2, 2]))
    msg = _refused(path, "ETL9G")
    assert msg.startswith(f"{path}: read as ETL8G") and "65–8192" in msg
    if name == "ETL8G_01":
        assert str(path) in _refused(tmp_path, "ETL9G")
        archive = _zip_with(tmp_path / "ETL8G.zip", {"ETL8G/ETL8G_01": path.read_bytes()})
        assert f"{archive}!ETL8G/ETL8G_01" in _refused(archive, "ETL9G")


def test_etl9g_named_file_with_etl8g_records_is_refused(tmp_path):
    path = tmp_path / "ETL9G" / "ETL9G_01"
    path.parent.mkdir()
    path.write_bytes(pack_records(edge_ink_images(4), [A, I, U, KA], [1] * 4))
    msg = _refused(path, "ETL8G")
    assert msg.startswith(f"{path}: read as ETL9G") and "61–8188" in msg
    assert str(path) in _refused(path.parent, "ETL8G")


def test_etl8g_with_blank_corners_or_unused_bytes_set_is_accepted(tmp_path):
    """What the content check must not refuse: blank top-left corners everywhere (common in
    ETL8G), with ink bottom right; or unused bytes that are not zero (a file that says nothing
    about its layout through them is read as ETL8G, as before)."""
    images = edge_ink_images(4)
    images[:, 0, :8] = 0  # ETL8G's bytes 61–64: zero in every record
    raw = pack_records(images, [A, I, U, KA], [1] * 4)
    path = tmp_path / "ETL8G_01"
    path.write_bytes(raw)
    np.testing.assert_array_equal(read_etl(path).images, images)
    junk = np.frombuffer(raw, dtype=np.uint8).reshape(4, ETL8G.record_size).copy()
    junk[:, 8188:] = 0x40  # every unused byte at the end set
    path.write_bytes(junk.tobytes())
    np.testing.assert_array_equal(read_etl(path).images, images)


def g_type_of(raw: np.ndarray) -> str | None:
    """What RecordCheck judges records (N, 8199 bytes) to be by their content."""
    check = RecordCheck(Source(Path("ETL8G_01"), size=raw.size, layout=ETL8G))
    check.add(np.ascontiguousarray(raw).view(ETL8G.dtype)[:, 0])
    return g_type_content(check.unused, check.top, check.bottom)


def test_real_handwriting_laid_out_as_etl9g_is_recognised(etl_dev):
    """The etl-dev files (ETL8G layout) are accepted; the same records with their images moved
    to ETL9G's place are recognised, even ETL8B2's binarised ones (in memory only)."""
    for name in ("etl8b2-46", "etl4c-46"):
        for path in sorted(etl_dev_set(etl_dev, name).glob("ETL8G_*")):
            raw = np.fromfile(path, dtype=np.uint8).reshape(-1, ETL8G.record_size)
            assert g_type_of(raw) != ETL9G.name
            moved = np.zeros_like(raw)
            moved[:, :30] = raw[:, :30]
            moved[:, ETL9G.image_offset : ETL9G.image_end] = raw[:, ETL8G.image_offset : ETL8G.image_end]
            assert g_type_of(moved) == ETL9G.name


# ---------------------------------------------------------------- corrupt compressed member


def test_zip_member_with_corrupt_deflate_stream(tmp_path, make_records):
    """A corrupt compressed stream ends in zlib.error inside zipfile (before any CRC check)."""
    first = make_records(tmp_path / "src", "ETL8G_01", jis=[A, I, U], sheet=1, seed=1)
    second = make_records(tmp_path / "src", "ETL8G_02", jis=[KA, A, I], sheet=2, seed=2)
    archive = _zip_with(
        tmp_path / "ETL8G.zip",
        {"ETL8G/ETL8G_01": first["path"].read_bytes(), "ETL8G/ETL8G_02": second["path"].read_bytes()},
    )
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("ETL8G/ETL8G_02")
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # local header: 30 B
    # Bits 1–2 of a deflate stream are its first block's type; 11 is invalid (RFC 1951, 3.2.3).
    # Headers and CRC stay intact, so the first member reads fine and the second fails in zlib.
    data[start] |= 0b110
    archive.write_bytes(bytes(data))
    with pytest.raises(EtlFormatError) as err:
        read_etl(archive)
    assert isinstance(err.value.__cause__, zlib.error)
    msg = str(err.value)
    assert msg.startswith(f"{archive}!ETL8G/ETL8G_02: ") and "download ETL8G.zip again" in msg
    assert "\n" not in msg
