"""The font every figure is drawn with: a subset of Noto Sans CJK JP Regular (SIL Open Font
License 1.1, ``OFL.txt``) holding every class set's characters and the text the figures write.

``python -m maist.fonts.make_subset`` rebuilds it (needs fontTools); ``README.md`` says how.
"""

from pathlib import Path

FONT: Path = Path(__file__).with_name("NotoSansCJKjp-Regular-subset.otf")
