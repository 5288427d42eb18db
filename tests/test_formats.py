"""maist.data.etl beyond ETL8G/ETL9G: the B-type (ETL8B2, ETL9B) and M-type (ETL1, ETL6, ETL7)
layouts, their labels, the checks that refuse a wrong layout, and what the dataset makes of them.

Every record here is packed with ``struct`` and by hand from AIST's format pages (form_e8b.htm,
form_e9b.htm, form_m.htm), independently of maist's dtypes; nothing is ETL data.
"""

from __future__ import annotations

import struct
import zipfile

import numpy as np
import pytest
from conftest import blob_images

from maist.data.dataset import EtlDataset, load_arrays
from maist.data.etl import (
    ETL1,
    ETL7,
    ETL8B2,
    ETL8G,
    ETL9B,
    LAYOUTS,
    EtlFormatError,
    list_sources,
    pack_records,
    read_etl,
    record_dtype,
    write_etl,
)
from maist.data.kana import char_to_jis, class_set, jis_to_char
from maist.data.preprocess import etl_levels_to_float
from tests.helpers import plain_preprocess

B8_STRUCT = ">2H4s504s"  # ETL8B2, 512 bytes (AIST's unpack.py)
B9_STRUCT = ">2H4s504s64x"  # ETL9B, 576 bytes
M_STRUCT = ">H2sH6BI4H4B4x2016s4x"  # ETL1/6/7, 2,052 bytes
TINY = plain_preprocess(image_size=8)
A, I, U, KA = (char_to_jis(c) for c in "あいうか")


def pack_bits(pixels: np.ndarray) -> bytes:
    """64 × 63 binary pixels → 504 bytes: row by row, 8 pixels a byte, most significant first."""
    out = bytearray()
    for row in pixels.tolist():
        assert len(row) == 64
        for k in range(0, 64, 8):
            out.append(sum(bit << (7 - j) for j, bit in enumerate(row[k : k + 8])))
    assert len(out) == 504
    return bytes(out)


def pack_nibbles(pixels: np.ndarray) -> bytes:
    """64 × 63 levels 0..15 → 2,016 bytes: two pixels a byte, high nibble first."""
    out = bytearray()
    for row in pixels.tolist():
        assert len(row) == 64
        out.extend((row[c] << 4) | row[c + 1] for c in range(0, 64, 2))
    assert len(out) == 2016
    return bytes(out)


def b_record(fmt, *, sheet, jis, pixels, reading=b"A.HI") -> bytes:
    return struct.pack(fmt, sheet, jis, reading, pack_bits(pixels))


def m_record(*, code, sheet, serial, pixels, char_code=b"KA", data_number=1, fields=(0,) * 12, level_max=15):
    """data number, 2-char code, sheet, JIS X 0201, EBCDIC, 4 evaluations/writer bytes,
    serial, 4 × uint16, Y, X, min and max level, image."""
    ebcdic, e1, e2, sex, age, ind, occ, gat, scn, y, x, lmin = fields
    return struct.pack(
        M_STRUCT,
        data_number,
        char_code,
        sheet,
        code,
        ebcdic,
        e1,
        e2,
        sex,
        age,
        serial,
        ind,
        occ,
        gat,
        scn,
        y,
        x,
        lmin,
        level_max,
        pack_nibbles(pixels),
    )


def corner_pixels(max_level: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 63 × 64 images: one with ink only at the ends of rows 0, 1 and 62, one patterned."""
    first = np.zeros((63, 64), np.uint8)
    first[0, 0] = first[0, 63] = first[1, 0] = first[62, 63] = max_level
    first[31, 7] = max_level  # last pixel of a byte's group (bit 0 / low nibble)
    second = (np.add.outer(np.arange(63) * 7, np.arange(64) * 3) % (max_level + 1)).astype(np.uint8)
    return first, second


# ---------------------------------------------------------------- the layouts


def test_layouts_match_aists_structs():
    sizes = {"ETL8G": 8199, "ETL9G": 8199, "ETL8B2": 512, "ETL9B": 576, "ETL1": 2052, "ETL6": 2052, "ETL7": 2052}
    assert {lay.name: lay.record_size for lay in LAYOUTS} == sizes
    assert struct.calcsize(B8_STRUCT) == 512 and struct.calcsize(B9_STRUCT) == 576
    assert struct.calcsize(M_STRUCT) == 2052
    for lay in LAYOUTS:
        dt = record_dtype(lay)
        assert dt.itemsize == lay.record_size
        assert dt.fields["image"][1] == lay.image_offset
        assert lay.image_bytes == {8199: 8128, 512: 504, 576: 504, 2052: 2016}[lay.record_size]
        assert dt.fields["sheet"][0].byteorder == ">"
    assert (ETL8B2.image_offset, ETL9B.image_offset, ETL1.image_offset) == (8, 8, 32)
    assert (ETL8B2.max_level, ETL9B.max_level, ETL1.max_level, ETL8G.max_level) == (1, 1, 15, 15)
    m = record_dtype(ETL1)
    assert [m.fields[k][1] for k in ("char_code", "sheet", "jis", "serial", "level_max")] == [2, 4, 6, 12, 27]


@pytest.mark.parametrize("layout, fmt", [(ETL8B2, B8_STRUCT), (ETL9B, B9_STRUCT)])
def test_b_type_exact_pixels_labels_and_dummy(tmp_path, layout, fmt):
    first, second = corner_pixels(1)
    dummy = b_record(fmt, sheet=0, jis=0, pixels=np.ones((63, 64), np.uint8), reading=b"    ")
    raw1 = b_record(fmt, sheet=0x0102, jis=KA, pixels=first, reading=b"KA.H")
    raw2 = b_record(fmt, sheet=2000, jis=0x3021, pixels=second)
    assert raw1[8] == 0x80 and raw1[15] == 0x01  # row 0: first pixel = top bit, last = bottom
    assert raw1[16] == 0x80 and raw1[8 + 503] == 0x01  # row 1 starts at byte 8 of the image
    if layout is ETL9B:  # the 64 "uncertain" bytes: not read
        dummy, raw1, raw2 = (r[:512] + bytes(range(64)) for r in (dummy, raw1, raw2))
    name = "ETL8B2C1" if layout is ETL8B2 else "ETL9B_1"
    path = tmp_path / name
    path.write_bytes(dummy + raw1 + raw2)

    recs = read_etl(path)

    assert recs.layout == layout.name and recs.max_level == 1 and len(recs) == 2
    assert recs.images.shape == (2, 63, 64) and recs.images.dtype == np.uint8
    img = recs.images[0]
    assert img[0, 0] == img[0, 63] == img[1, 0] == img[62, 63] == img[31, 7] == 1
    assert img[0, 1] == img[0, 62] == img[1, 1] == img[62, 62] == 0 and img.sum() == 5
    np.testing.assert_array_equal(recs.images[1], second)
    assert recs.jis.tolist() == [KA, 0x3021] and recs.sheet.tolist() == [0x0102, 2000]
    assert recs.serial.tolist() == [2, 3]  # no serial field: the record's place (dummy = 1)
    assert (recs.skipped, recs.duplicates) == (0, 0)


@pytest.mark.parametrize("layout", [ETL8B2, ETL9B])
def test_b_type_pack_matches_struct_and_round_trips(tmp_path, layout):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 2, size=(9, 63, 64), dtype=np.uint8)
    jis = [A, I, U, KA, 0x3021, 0x4F53, 0x4F43, A, I]
    fmt = B8_STRUCT if layout is ETL8B2 else B9_STRUCT
    expected = b"".join(b_record(fmt, sheet=7, jis=j, pixels=img, reading=b"    ") for img, j in zip(images, jis))
    assert pack_records(images, jis, [7] * 9, layout=layout) == expected
    write_etl(tmp_path / ("ETL8B2C2" if layout is ETL8B2 else "ETL9B_2"), layout, images, jis, [7] * 9)
    recs = read_etl(tmp_path)
    np.testing.assert_array_equal(recs.images, images)
    assert recs.jis.tolist() == jis and recs.layout == layout.name
    with pytest.raises(ValueError, match="0..1"):
        pack_records(images * 2, jis, [7] * 9, layout=layout)


def test_etl1_exact_pixels_codes_and_fields(tmp_path):
    first, second = corner_pixels(15)
    first[0, 1], first[1, 1] = 3, 12  # second pixel of a byte: its low nibble
    raw = [
        m_record(
            code=0xB1,
            sheet=0x0102,
            serial=0x01020304,
            pixels=first,
            char_code=b" A",
            fields=(0xC1, 1, 2, 1, 25, 3, 4, 5, 6, 7, 8, 0),
        ),  # ｱ
        m_record(code=0xDD, sheet=2000, serial=77, pixels=second, char_code=b" N"),  # ﾝ
        m_record(code=0xA8, sheet=2000, serial=78, pixels=second, char_code=b"WI"),  # ヰ
        m_record(code=0x41, sheet=2000, serial=79, pixels=second, char_code=b"A "),  # A
        m_record(code=0x30, sheet=2000, serial=80, pixels=second, char_code=b"0 "),  # 0
    ]
    assert raw[0][32] == 0xF3 and raw[0][32 + 31] == 0x0F  # row 0: bytes 33–64 (1-based)
    assert raw[0][32 + 32] == 0xFC and raw[0][32 + 2015] == 0x0F and raw[0][2048:] == bytes(4)
    path = tmp_path / "ETL1C_07"
    path.write_bytes(b"".join(raw))

    recs = read_etl(path)

    assert recs.layout == "ETL1" and recs.max_level == 15 and recs.images.shape == (5, 63, 64)
    img = recs.images[0]
    assert (img[0, 0], img[0, 1], img[0, 63], img[1, 0], img[1, 1], img[62, 63]) == (15, 3, 15, 15, 12, 15)
    assert img[0, 62] == img[62, 62] == 0 and img[31, 7] == 15
    np.testing.assert_array_equal(recs.images[1:], np.array([second] * 4))
    assert [jis_to_char(int(j)) for j in recs.jis] == ["ア", "ン", "ヰ", "Ａ", "０"]
    assert recs.jis.tolist() == [0x2522, 0x2573, 0x2570, 0x2341, 0x2330]
    assert recs.sheet.tolist() == [0x0102] + [2000] * 4  # big-endian
    assert recs.serial.tolist() == [0x01020304, 77, 78, 79, 80]
    head = np.frombuffer(raw[0], dtype=record_dtype(ETL1))[0]
    assert (head["char_code"], head["jis"], head["ebcdic"]) == (b" A", 0xB1, 0xC1)
    assert (head["sex"], head["age"], head["pos_y"], head["pos_x"], head["level_max"]) == (1, 25, 7, 8, 15)


def test_etl7_kana_codes_are_read_as_hiragana_and_etl6_as_katakana(tmp_path):
    images = blob_images(1, seed=3)[0, :63, :64]
    codes = [0xB1, 0xB6, 0xDD, 0xA6, 0xA8, 0xAA]  # ｱ ｶ ﾝ ｦ, and the codes used for ゐ/ヰ ゑ/ヱ
    raw = b"".join(m_record(code=c, sheet=1, serial=k + 1, pixels=images) for k, c in enumerate(codes))
    for name, chars in (("ETL7LC_1", "あかんをゐゑ"), ("ETL7SC_2", "あかんをゐゑ"), ("ETL6C_03", "アカンヲヰヱ")):
        (tmp_path / name).write_bytes(raw)
        recs = read_etl(tmp_path / name)
        assert "".join(jis_to_char(int(j)) for j in recs.jis) == chars, name
        assert recs.layout == name[:4]


def test_m_type_pack_matches_struct(tmp_path):
    images = np.random.default_rng(2).integers(0, 16, size=(3, 63, 64), dtype=np.uint8)
    expected = b"".join(
        m_record(code=c, sheet=9, serial=k + 1, pixels=img, level_max=0, data_number=k + 1)
        for k, (c, img) in enumerate(zip([0xB6, 0xB7, 0xB8], images))
    )
    got = pack_records(images, [0xB6, 0xB7, 0xB8], [9] * 3, reading=[b"KA"] * 3, layout=ETL1)
    assert got == expected
    write_etl(tmp_path / "ETL7LC_2", ETL7, images, [0xB6, 0xB7, 0xB8], [9] * 3)
    recs = read_etl(tmp_path)
    np.testing.assert_array_equal(recs.images, images)
    assert "".join(jis_to_char(int(j)) for j in recs.jis) == "かきく"


def test_zip_of_etl1_files(tmp_path):
    images = blob_images(4, seed=1)[:, :63, :64]
    first = b"".join(
        m_record(code=c, sheet=s, serial=k, pixels=images[k], char_code=b"  ")
        for k, (c, s) in enumerate([(0xB1, 1001), (0xB2, 1001)])
    )
    second = b"".join(
        m_record(code=c, sheet=s, serial=k + 2, pixels=images[k + 2], char_code=b"  ")
        for k, (c, s) in enumerate([(0x30, 1001), (0x31, 1002)])
    )
    archive = tmp_path / "ETL1.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ETL1/ETL1INFO", "info")
        zf.writestr("ETL1/ETL1C_07", first)  # stored before _01: read in name order
        zf.writestr("ETL1/ETL1C_01", second)

    recs = read_etl(archive)

    assert recs.files == (f"{archive}!ETL1/ETL1C_01", f"{archive}!ETL1/ETL1C_07")
    assert [s.layout.name for s in list_sources(archive)] == ["ETL1", "ETL1"]
    assert "".join(jis_to_char(int(j)) for j in recs.jis) == "０１アイ"
    assert recs.sheet.tolist() == [1001, 1002, 1001, 1001]
    np.testing.assert_array_equal(recs.images, images[[2, 3, 0, 1]])
    katakana = read_etl(archive, codes=class_set("katakana46").jis_to_label)  # the old name
    assert "".join(jis_to_char(int(j)) for j in katakana.jis) == "アイ" and katakana.skipped == 2


def test_duplicates_are_dropped_in_every_layout(tmp_path):
    images = np.random.default_rng(4).integers(0, 2, size=(3, 63, 64), dtype=np.uint8)
    write_etl(tmp_path / "a" / "ETL8B2C1", ETL8B2, images, [A, I, U], [1, 1, 1])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "ETL8B2C1").write_bytes((tmp_path / "a" / "ETL8B2C1").read_bytes())
    recs = read_etl(tmp_path)
    assert len(recs) == 3 and recs.duplicates == 3
    np.testing.assert_array_equal(recs.images, images)


# ---------------------------------------------------------------- wrong layouts are refused


def _error(path) -> str:
    with pytest.raises(EtlFormatError) as err:
        read_etl(path)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_etl8b2_name_with_etl9b_records_is_refused_by_size(tmp_path):
    pix = np.zeros((63, 64), np.uint8)
    path = tmp_path / "ETL8B2C1"
    path.write_bytes(b"".join(b_record(B9_STRUCT, sheet=1, jis=A, pixels=pix) for _ in range(3)))
    msg = _error(path)
    assert msg.startswith(f"{path}: 1,728 bytes is not a whole number of 512-byte ETL8B2 records")
    assert "ETL9B records: is it one?" in msg


def test_etl9b_name_with_etl8b2_records_is_refused_by_header(tmp_path):
    """9 ETL8B2 records are 8 ETL9B records long: the size fits, the headers do not."""
    pix = np.zeros((63, 64), np.uint8)
    path = tmp_path / "ETL9B_1"
    path.write_bytes(b"".join(b_record(B8_STRUCT, sheet=1, jis=A, pixels=pix) for _ in range(9)))
    assert path.stat().st_size == 8 * 576
    msg = _error(path)
    assert msg.startswith(f"{path}: not ETL9B records: 7 of 7 have a header no ETL9B record has")
    assert "JIS X 0208 code 0x0000" in msg and "fit ETL8B2 records" in msg


def test_etl1_name_with_other_records_is_refused(tmp_path):
    g = pack_records(blob_images(4), [A, I, U, KA], [1] * 4)  # ETL8G records
    (tmp_path / "ETL1C_01").write_bytes(g)
    msg = _error(tmp_path / "ETL1C_01")
    assert "2,052-byte ETL1 records" in msg and "ETL8G or ETL9G records: is it one?" in msg
    # 57 ETL9B records are 16 M-type records long: read as ETL7, their headers are impossible.
    pix = np.zeros((63, 64), np.uint8)
    b = b"".join(b_record(B9_STRUCT, sheet=1, jis=A, pixels=pix) for _ in range(57))
    (tmp_path / "ETL7LC_1").write_bytes(b)
    msg = _error(tmp_path / "ETL7LC_1")
    assert msg.startswith(f"{tmp_path / 'ETL7LC_1'}: not ETL7 records: 15 of 16")


def test_m_type_tolerates_a_stray_record_but_not_more(tmp_path):
    images = np.zeros((200, 63, 64), np.uint8)
    codes = [0xB1] * 200
    write_etl(tmp_path / "ETL6C_01", ETL1, images, codes, [1] * 200, reading=[b"A "] * 200)
    raw = bytearray((tmp_path / "ETL6C_01").read_bytes())
    raw[6] = 0x05  # record 1: a control code, not JIS X 0201 graphic
    (tmp_path / "ETL6C_01").write_bytes(bytes(raw))
    recs = read_etl(tmp_path / "ETL6C_01")
    assert len(recs) == 200 and recs.jis[0] == 0 and (recs.jis[1:] == 0x2522).all()
    raw[2052 + 6] = raw[2 * 2052 + 2] = 0x05  # 3 of 200: more than 1%
    (tmp_path / "ETL6C_01").write_bytes(bytes(raw))
    assert "not ETL6 records: 3 of 200" in _error(tmp_path / "ETL6C_01")


@pytest.mark.parametrize("where", ["folder", "zip"])
def test_a_root_mixing_layouts_is_refused_naming_the_files(tmp_path, make_records, where):
    root = tmp_path / "mixed"
    make_records(root / "ETL8G", "ETL8G_01", jis=[A, I], sheet=1)
    make_records(root / "ETL8G", "ETL8G_02", jis=[A, I], sheet=2)
    write_etl(root / "ETL1" / "ETL1C_07", ETL1, np.zeros((2, 63, 64), np.uint8), [0xB1, 0xB2], [1, 1])
    write_etl(root / "ETL8B" / "ETL8B2C1", ETL8B2, np.zeros((1, 63, 64), np.uint8), [A], [1])
    if where == "zip":
        archive = tmp_path / "mixed.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for p in sorted(root.rglob("ETL*")):
                if p.is_file():
                    zf.write(p, str(p.relative_to(root)))
        root = archive
    msg = _error(root)
    assert msg.startswith(f"{root}: mixes record files of different ETL layouts")
    assert "ETL8G: ETL8G/ETL8G_01, ETL8G/ETL8G_02 (2 files)" in msg
    assert "ETL1: ETL1/ETL1C_07 (1 file)" in msg and "ETL8B2: ETL8B/ETL8B2C1 (1 file)" in msg


def test_b_type_file_of_only_its_dummy_has_no_records(tmp_path):
    (tmp_path / "ETL8B2C3").write_bytes(bytes(512))
    recs = read_etl(tmp_path)
    assert len(recs) == 0 and recs.images.shape == (0, 63, 64)


# ---------------------------------------------------------------- into the dataset


def test_binary_images_map_ink_to_one_and_preprocess_any_size():
    first, _ = corner_pixels(1)
    x = etl_levels_to_float(first[None], ETL8B2.max_level)
    assert x.max() == 1.0 and x.dtype == np.float32
    assert etl_levels_to_float(np.array([0, 15], np.uint8)).tolist() == [0.0, 1.0]  # default: 4-bit
    out = plain_preprocess(image_size=28)(x)
    assert out.shape == (1, 28, 28) and 0 < float(out.max()) <= 1.0
    crop = plain_preprocess(image_size=16, crop=True, threshold=0.3, despeckle=1)(
        etl_levels_to_float(blob_images(3)[:, :63, :64], 15)
    )
    assert crop.shape == (3, 16, 16)


def test_dataset_reads_etl8b2_with_ink_at_one(tmp_path):
    images = np.zeros((6, 63, 64), np.uint8)
    for k in range(6):
        images[k, 10 + k : 40, 20 : 30 + k] = 1
    jis = [A, I, char_to_jis("っ"), A, I, 0x3021]
    write_etl(tmp_path / "etl" / "ETL8B2C1", ETL8B2, images, jis, [1, 1, 1, 2, 2, 2])
    ds = EtlDataset(
        tmp_path / "etl",
        "hiragana75",
        preprocess=plain_preprocess(image_size=16, contrast="none"),
        cache_dir=tmp_path / "c",
    )
    assert len(ds) == 5 and ds.skipped == 1 and ds.writers.tolist() == [1, 1, 1, 2, 2]
    assert [ds.classes[t] for t in ds.targets.tolist()] == list("あいっあい")
    assert float(ds.data.max()) == pytest.approx(1.0) and float(ds.data.min()) == 0.0


def test_dataset_reads_etl1_katakana(tmp_path):
    images = blob_images(4, seed=2)[:, :63, :64]
    write_etl(tmp_path / "etl" / "ETL1C_07", ETL1, images, [0xB1, 0x41, 0xDD, 0xA8], [5] * 4)
    arrays = load_arrays(tmp_path / "etl", "katakana48", TINY, cache_dir=False)
    k48 = class_set("katakana48")
    assert [k48.classes[t] for t in arrays["labels"]] == list("アンヰ")
    assert int(arrays["skipped"]) == 1 and arrays["images"].shape == (3, 8, 8)
    assert [jis_to_char(int(j)) for j in arrays["jis"]] == list("アンヰ")


@pytest.mark.parametrize("name", ["katakana46", "kanji881"])
def test_class_set_the_source_lacks_is_an_error(tmp_path, make_records, name):
    make_records(tmp_path / "etl", jis=[A, I, U], sheet=1)  # ETL8G hiragana only
    with pytest.raises(EtlFormatError) as err:
        EtlDataset(tmp_path / "etl", name, preprocess=TINY, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert f"none of its 3 ETL8G records belongs to class set {name!r}" in msg
