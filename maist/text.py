"""Text from files (class names in a checkpoint, file names on disk) made safe to print."""

from __future__ import annotations

import unicodedata

# Characters that reorder the text after them on a terminal (bidirectional embeddings, overrides,
# isolates and marks).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text) -> str:
    """``text`` with every control character (C0, DEL, C1: escape sequences, newlines), bidirectional
    control and lone surrogate written as an escape (``\\x1b``, ``\\n``, ``\\u202e``), so printing it
    cannot move the cursor, recolour or clear the terminal, break a table row or reorder what
    follows. A lone surrogate U+DC80…U+DCFF stands for an undecodable byte of a file name
    (``os.fsdecode``): it is written as that byte, ``\\xff``, which also keeps the output valid UTF-8."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs"):
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)
