"""The one place that lists characters and class sets.

ETL8G labels characters by their JIS X 0208 code. Hiragana sit in JIS row 4
(0x2421 ぁ … 0x2473 ん) in Unicode order, so a code maps to a character by offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from maist.errors import ConfigError

JIS_HIRAGANA_FIRST = 0x2421  # ぁ
JIS_HIRAGANA_LAST = 0x2473  # ん
UNICODE_HIRAGANA_FIRST = 0x3041  # ぁ

# The article's 71 classes, in kana-table (JIS) order.
HIRAGANA71 = (
    "あいうえおかがきぎくぐけげこごさざしじすずせぜそぞただちぢつづてでとど"
    "なにぬねのはばぱひびぴふぶぷへべぺほぼぽまみむめもやゆよらりるれろわをん"
)
# The small kana that ETL8G also holds (75 hiragana in all).
ETL8G_SMALL = "っゃゅょ"
# Every small hiragana and the large form it is merged into.
SMALL_TO_LARGE = {
    "ぁ": "あ", "ぃ": "い", "ぅ": "う", "ぇ": "え", "ぉ": "お",
    "っ": "つ", "ゃ": "や", "ゅ": "ゆ", "ょ": "よ", "ゎ": "わ",
}


def jis_to_char(code: int) -> str:
    """The character of one JIS X 0208 code (any row, via EUC-JP)."""
    if JIS_HIRAGANA_FIRST <= code <= JIS_HIRAGANA_LAST:
        return chr(UNICODE_HIRAGANA_FIRST + code - JIS_HIRAGANA_FIRST)
    try:
        return bytes([(code >> 8) | 0x80, (code & 0xFF) | 0x80]).decode("euc_jp")
    except UnicodeDecodeError:
        return f"<JIS {code:#06x}>"


def char_to_jis(char: str) -> int:
    """The JIS X 0208 code of one character."""
    raw = char.encode("euc_jp")
    if len(raw) != 2:
        raise ValueError(f"{char!r} has no two-byte JIS X 0208 code")
    return ((raw[0] & 0x7F) << 8) | (raw[1] & 0x7F)


def _kana_order(chars) -> str:
    return "".join(sorted(set(chars), key=char_to_jis))


@dataclass(frozen=True)
class ClassSet:
    """A labelling: the class names, and which JIS codes map to which label."""

    name: str
    classes: tuple[str, ...]
    jis_to_label: dict[int, int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_of(self, char: str) -> int:
        return self.jis_to_label[char_to_jis(char)]


def _plain(name: str, chars: str) -> ClassSet:
    classes = tuple(_kana_order(chars))
    return ClassSet(name, classes, {char_to_jis(c): i for i, c in enumerate(classes)})


def _merged(name: str) -> ClassSet:
    base = _plain(name, HIRAGANA71)
    mapping = dict(base.jis_to_label)
    for small, large in SMALL_TO_LARGE.items():
        mapping[char_to_jis(small)] = base.label_of(large)
    return ClassSet(name, base.classes, mapping)


_BUILDERS = {
    "hiragana71": lambda: _plain("hiragana71", HIRAGANA71),
    "hiragana75": lambda: _plain("hiragana75", HIRAGANA71 + ETL8G_SMALL),
    "hiragana71_merged": lambda: _merged("hiragana71_merged"),
}
CLASS_SET_NAMES = tuple(_BUILDERS)


@cache
def class_set(name: str) -> ClassSet:
    """Look up a class set by name: hiragana71 (default), hiragana75, hiragana71_merged."""
    try:
        return _BUILDERS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown class set {name!r}; choose one of {', '.join(CLASS_SET_NAMES)}"
        ) from None
