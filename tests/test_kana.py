"""maist.data.kana: characters, JIS codes and class sets; labels come from JIS codes."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

from maist.data.dataset import EtlDataset
from maist.data.kana import (
    CLASS_SET_NAMES,
    ETL8G_SMALL,
    HIRAGANA71,
    KANJI881,
    SMALL_TO_LARGE,
    char_to_jis,
    class_set,
    jis_to_char,
)
from tests.helpers import plain_preprocess

# The article's 71 classes, as docs/etl-format.md lists them.
ARTICLE71 = (
    "あいうえおかがきぎくぐけげこごさざしじすずせぜそぞただちぢつづてでとど"
    "なにぬねのはばぱひびぴふぶぷへべぺほぼぽまみむめもやゆよらりるれろわをん"
)
TINY = plain_preprocess(image_size=8)


def test_known_codes():
    assert char_to_jis("あ") == 0x2422
    assert char_to_jis("ん") == 0x2473
    assert char_to_jis("ぁ") == 0x2421
    assert char_to_jis("ゃ") == 0x2463 and char_to_jis("や") == 0x2464
    assert jis_to_char(0x2422) == "あ" and jis_to_char(0x2473) == "ん"
    assert jis_to_char(0x3021) == "亜"  # kanji go through EUC-JP
    assert jis_to_char(0x7F7F) == "<JIS 0x7f7f>"  # no character: a readable placeholder


def test_every_row4_code_round_trips_and_matches_euc_jp():
    for code in range(0x2421, 0x2474):
        char = jis_to_char(code)
        assert char == chr(0x3041 + code - 0x2421)
        assert char == bytes([(code >> 8) | 0x80, (code & 0xFF) | 0x80]).decode("euc_jp")
        assert char_to_jis(char) == code


def test_char_to_jis_rejects_one_byte_characters():
    with pytest.raises(ValueError):
        char_to_jis("a")


def test_class_set_sizes():
    assert CLASS_SET_NAMES == (
        "hiragana71",
        "hiragana75",
        "hiragana71_merged",
        "katakana46",
        "katakana48",
        "kanji881",
        "kanji2965",
        "etl8g_all",
        "etl9g_all",
    )
    h71, h75, merged = (class_set(n) for n in CLASS_SET_NAMES[:3])
    assert h71.num_classes == 71 and len(h71.jis_to_label) == 71
    assert h75.num_classes == 75 and len(h75.jis_to_label) == 75
    assert merged.num_classes == 71
    assert len(merged.jis_to_label) == 71 + len(SMALL_TO_LARGE)
    assert sorted(set(merged.jis_to_label.values())) == list(range(71))
    sizes = {
        "katakana46": 46,
        "katakana48": 48,
        "kanji881": 881,
        "kanji2965": 2965,
        "etl8g_all": 956,
        "etl9g_all": 3036,
    }
    for name, n in sizes.items():
        cs = class_set(name)
        assert cs.num_classes == n == len(set(cs.classes)) == len(cs.jis_to_label), name
        assert sorted(cs.jis_to_label.values()) == list(range(n))
        codes = [char_to_jis(c) for c in cs.classes]
        assert codes == sorted(codes) and cs.jis_to_label == {c: i for i, c in enumerate(codes)}


def test_katakana_sets():
    k46, k48 = class_set("katakana46"), class_set("katakana48")
    assert k46.classes[0] == "ア" and k46.classes[-1] == "ン" and "ヲ" in k46.classes
    assert not {"ヰ", "ヱ", "ァ", "ッ", "ガ", "ヴ"} & set(k46.classes)  # no old, small or voiced
    assert set(k48.classes) == set(k46.classes) | {"ヰ", "ヱ"}
    assert [char_to_jis(c) for c in "アンヰヱ"] == [0x2522, 0x2573, 0x2570, 0x2571]
    assert all(0x2521 <= char_to_jis(c) <= 0x2573 for c in k48.classes)  # JIS row 5
    assert k48.label_of("ヰ") == k48.classes.index("ヰ")


def test_kanji2965_is_jis_level_1():
    k = class_set("kanji2965")
    assert k.classes[0] == "亜" == jis_to_char(0x3021) and k.label_of("亜") == 0
    assert k.classes[-1] == "腕" == jis_to_char(0x4F53) and k.label_of("腕") == 2964
    assert min(k.jis_to_label) == 0x3021 and max(k.jis_to_label) == 0x4F53
    rows = {code >> 8 for code in k.jis_to_label}
    assert rows == set(range(0x30, 0x50))  # rows 16–47
    assert sum(1 for code in k.jis_to_label if code >> 8 == 0x4F) == 51  # row 47 is short
    assert "鰯" in k.classes  # 0x3073: level 1
    assert "弌" not in k.classes and "丼" not in k.classes  # 0x5021, 0x5027: level 2


def test_kanji881_is_the_1958_education_kanji():
    k = class_set("kanji881")
    assert len(KANJI881) == 881 == len(set(KANJI881))
    assert set(KANJI881) <= set(class_set("kanji2965").classes)  # all JIS level 1
    # AIST's ETL8B2 table (form_e8b.htm) ends its kanji at 0x4F43 (話).
    assert max(k.jis_to_label) == 0x4F43 and k.classes[-1] == "話"
    assert k.classes[0] == "愛" == jis_to_char(0x3026)
    for char in "一右雨円王音学漢字日本語話燈壱弐":
        assert char in k.classes
    for char in "亜灯誰丼":  # not in the 1948 list (灯 replaced 燈 in 1977)
        assert char not in k.classes


def test_all_sets_are_kanji_plus_hiragana():
    e8, e9 = class_set("etl8g_all"), class_set("etl9g_all")
    assert set(e8.classes) == set(KANJI881) | set(class_set("hiragana75").classes)
    assert set(e9.classes) == set(class_set("kanji2965").classes) | set(HIRAGANA71)
    assert e8.classes[0] == "あ" and e8.classes[74] == "ん"  # hiragana first (JIS row 4)
    assert e8.classes[75] == "愛" and e8.label_of("話") == 955
    assert e9.classes[0] == "あ" and e9.classes[71] == "亜"


def test_hiragana71_is_the_articles_set_in_jis_order():
    h71 = class_set("hiragana71")
    assert "".join(h71.classes) == ARTICLE71 == HIRAGANA71
    codes = [char_to_jis(c) for c in h71.classes]
    assert codes == sorted(codes)
    assert h71.jis_to_label == {c: i for i, c in enumerate(codes)}
    assert not set(h71.classes) & set(SMALL_TO_LARGE)  # no small kana
    voiced = [c for c in h71.classes if len(unicodedata.normalize("NFD", c)) == 2]
    assert len(voiced) == 25  # 20 with dakuten + 5 with handakuten


def test_hiragana75_adds_the_etl8g_small_kana():
    h75 = class_set("hiragana75")
    assert set(h75.classes) == set(HIRAGANA71) | set("っゃゅょ") == set(HIRAGANA71 + ETL8G_SMALL)
    codes = [char_to_jis(c) for c in h75.classes]
    assert codes == sorted(codes)
    # Every 75-class label is distinct, and small っ sits just before つ.
    assert h75.label_of("っ") + 1 == h75.label_of("つ")


def test_merged_maps_small_kana_onto_large():
    merged = class_set("hiragana71_merged")
    assert merged.classes == class_set("hiragana71").classes
    assert merged.jis_to_label[0x2463] == merged.label_of("や")  # ゃ → や
    assert merged.jis_to_label[char_to_jis("っ")] == merged.label_of("つ")
    for small, large in SMALL_TO_LARGE.items():
        assert merged.label_of(small) == merged.label_of(large)
        assert merged.classes[merged.label_of(small)] == large


def test_unknown_class_set():
    with pytest.raises(ValueError) as err:
        class_set("katakana50")
    assert "katakana50" in str(err.value) and "hiragana71" in str(err.value)
    with pytest.raises(ValueError) as err:  # a name that needs an explanation
        class_set("katakana51")
    assert "48 characters" in str(err.value) and "katakana48" in str(err.value)


def test_dataset_rejects_unknown_class_set(tmp_path, make_records):
    make_records(tmp_path / "etl", jis=[0x2422], sheet=1)
    with pytest.raises(ValueError, match="hiragana70"):
        EtlDataset(tmp_path / "etl", class_set="hiragana70", preprocess=TINY, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_labels_come_from_jis_codes_not_readings(tmp_path, make_records):
    chars = "あかんゃ"
    jis = [char_to_jis(c) for c in chars]
    # Every reading names another character: a loader labelling by reading would get them wrong.
    lies = [b"KA.HIRA ", b"A.HIRA  ", b"YA.HIRA ", b"N.HIRA  "]
    make_records(tmp_path / "etl", jis=jis, sheet=1, reading=lies)
    h71 = EtlDataset(tmp_path / "etl", "hiragana71", preprocess=TINY, cache_dir=tmp_path / "c")
    assert [h71.classes[t] for t in h71.targets.tolist()] == list("あかん")  # ゃ skipped
    assert h71.skipped == 1
    h75 = EtlDataset(tmp_path / "etl", "hiragana75", preprocess=TINY, cache_dir=tmp_path / "c")
    assert [h75.classes[t] for t in h75.targets.tolist()] == list("あかんゃ")
    merged = EtlDataset(tmp_path / "etl", "hiragana71_merged", preprocess=TINY, cache_dir=tmp_path / "c")
    assert [merged.classes[t] for t in merged.targets.tolist()] == list("あかんや")
    assert merged.targets[3] == class_set("hiragana71_merged").label_of("や")
    assert merged.skipped == 0


def test_labels_of_every_class(tmp_path, make_records):
    chars = HIRAGANA71 + ETL8G_SMALL
    make_records(
        tmp_path / "etl",
        jis=[char_to_jis(c) for c in chars],
        sheet=7,
        images=np.zeros((len(chars), 127, 128), np.uint8),
    )
    ds = EtlDataset(tmp_path / "etl", "hiragana75", preprocess=TINY, cache_dir=tmp_path / "c")
    assert [ds.classes[t] for t in ds.targets.tolist()] == list(chars)
    assert ds.class_counts() == {c: 1 for c in class_set("hiragana75").classes}
