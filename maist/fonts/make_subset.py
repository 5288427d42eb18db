"""Make the figures' font: Noto Sans CJK JP Regular cut down to the characters MAIST draws.

    python -m maist.fonts.make_subset [--source NotoSansCJK-Regular.ttc] [--out PATH]

The characters (:func:`characters`): every class set's (``maist.data.kana``: hiragana, katakana,
the 2,965 kanji of JIS X 0208 level 1, which hold kanji881's), the whole of Unicode's CJK
punctuation, hiragana and katakana blocks (small kana, ゐ ゑ ゔ ヴ, the voiced marks ゛ ゜),
printable ASCII and the few signs the figures and reports write (→ × – …). The source is the
Japanese face (number 0) of Debian's ``fonts-noto-cjk`` collection; the subset keeps its names
(with the copyright and licence notices), its hinting, its ``.notdef`` box (what a character
outside the subset draws as) and the layout features of a horizontal line of text
(``LAYOUT_FEATURES``), not the vertical, per-language or alternate forms, which would double its
glyphs. Needs fontTools (``pip install fonttools``), which MAIST itself does not.
"""

from __future__ import annotations

import argparse
import unicodedata
from pathlib import Path

from maist.data.kana import CLASS_SET_NAMES, class_set
from maist.files import atomic_path
from maist.fonts import FONT

SOURCE = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
SOURCE_FACE = 0  # the collection's Noto Sans CJK JP
SOURCE_FAMILY = "Noto Sans CJK JP"
ASCII = "".join(chr(c) for c in range(0x20, 0x7F))
KANA_BLOCKS = "".join(chr(c) for c in range(0x3000, 0x3100))  # CJK punctuation, hiragana, katakana
SIGNS = "×±°·–—‘’“”…→←↑↓≤≥"
LAYOUT_FEATURES = ["ccmp", "kern", "liga", "mark", "mkmk"]


def characters() -> str:
    """Every character the subset holds, in code-point order (the blocks' unassigned points left out)."""
    chars = set(ASCII + KANA_BLOCKS + SIGNS)
    for name in CLASS_SET_NAMES:
        chars.update("".join(class_set(name).classes))
    return "".join(sorted(c for c in chars if unicodedata.category(c) != "Cn"))


def make_subset(source: Path, out: Path) -> str:
    """Write the subset of ``source``'s Japanese face to ``out``; return the characters it has."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    font = TTFont(source, fontNumber=SOURCE_FACE, recalcTimestamp=False)
    family = font["name"].getDebugName(1)
    if family != SOURCE_FAMILY:
        raise SystemExit(f"{source} face {SOURCE_FACE} is {family!r}, not {SOURCE_FAMILY!r}")
    wanted = characters()
    missing = [c for c in wanted if ord(c) not in font.getBestCmap()]
    if missing:
        raise SystemExit(f"{source} lacks {len(missing)} characters: {''.join(missing[:20])}")
    options = subset.Options()
    options.name_IDs = ["*"]  # copyright, licence and trademark notices too
    options.name_languages = ["*"]
    options.layout_features = LAYOUT_FEATURES
    options.notdef_outline = True  # a character outside the subset draws as a box, not as nothing
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=wanted)
    subsetter.subset(font)
    with atomic_path(out) as tmp:
        font.save(tmp)
    return wanted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=SOURCE, help=f"Noto Sans CJK collection (default {SOURCE})")
    ap.add_argument("--out", type=Path, default=FONT, help=f"where to write the subset (default {FONT})")
    args = ap.parse_args()
    chars = make_subset(args.source, args.out)
    print(f"{args.out}: {len(chars):,} characters, {args.out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
