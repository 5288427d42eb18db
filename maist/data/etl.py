"""The only code that knows the ETL record layouts.

Every ETL file is a plain sequence of fixed-size big-endian records; which layout a file holds
is chosen from its name (AIST's file names, below) and checked against its size and header
fields, so a wrong layout is an error naming the file, never a silent decode. Supported:

========  ==========================  ======  ==============  ========================
layout    AIST's files                record  image           label
========  ==========================  ======  ==============  ========================
ETL8G     ETL8G_01 … ETL8G_33         8,199   128×127, 4-bit  JIS X 0208
ETL9G     ETL9G_01 … ETL9G_50         8,199   128×127, 4-bit  JIS X 0208
ETL8B2    ETL8B2C1 … ETL8B2C3         512     64×63, 1-bit    JIS X 0208, dummy first
ETL9B     ETL9B_1 … ETL9B_5           576     64×63, 1-bit    JIS X 0208, dummy first
ETL1      ETL1C_01 … ETL1C_13         2,052   64×63, 4-bit    JIS X 0201 (katakana …)
ETL6      ETL6C_01 … ETL6C_12         2,052   64×63, 4-bit    JIS X 0201 (katakana …)
ETL7      ETL7LC_1, _2, ETL7SC_1, _2  2,052   64×63, 4-bit    JIS X 0201 read as hiragana
========  ==========================  ======  ==============  ========================

Sources, checked for this module (each layout below says which fields come from where):
AIST's format pages "G-Type Data Format (ETL8)" / "(ETL9)" (etlcdb/etln/form_e8g.htm,
form_e9g.htm: the 30-byte header), "B-Type Data Format (ETL8)" / "(ETL9)" (form_e8b.htm,
form_e9b.htm: 512/576-byte records, "No. of records = N+1", a dummy first), "M-Type Data Format
(ETL1, ETL6, ETL7)" (form_m.htm: 2,052-byte records, bytes 1–32), "Specification of ETL-1"
(16 levels, 64 × 63 pixels; ETL1C_01 … ETL1C_13 and their categories), and AIST's sample
unpacking script (unpack.py, on "File Formats and Sample Script"; read in published copies),
which gives every record's full struct (where the G-type and M-type images start and end),
skips the first record of ETL8B/ETL9B files, renders B-type bits with 1 as ink (bright, like
the 4-bit levels ×16) and maps the M-type JIS X 0201 codes (ｨ → ヰ, ｪ → ヱ). File names of
ETL6/ETL7 (ETL6C_nn, ETL7LC_n, ETL7SC_n) are those of AIST's zips as published loaders use them.

The canonical label of a record is a JIS X 0208 code (``EtlRecords.jis``) for every layout:
ETL1/6/7 store a one-byte JIS X 0201 code, which is mapped to the JIS X 0208 code of the same
character (half-width katakana to full-width katakana; ETL7's to hiragana). Class sets
(``maist.data.kana``) are written as characters and compiled to these codes;
``kana.jis_to_char`` gives the Unicode character.

Images keep their native size and levels (``EtlRecords.images``: (N, H, W) uint8,
0 = paper, ``max_level`` = darkest ink: 15 for 4-bit layouts, 1 for the binary B-type);
``Layout.max_level`` is the one place that says which. Decoding is vectorised with numpy and
runs files side by side on a few threads: one read per file, header fields through a structured
dtype, pixels unpacked in cache-sized blocks straight into the output, and only for the records
that are kept. Records read twice (a copied file) are kept once.
"""

from __future__ import annotations

import lzma
import os
import re
import threading
import unicodedata
import zipfile
import zlib
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maist.errors import UserError
from maist.files import write_atomic

# ---------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    """One ETL record layout: its size, header fields, image and file names.

    ``header`` lists (name, numpy dtype, 0-based byte offset) of the fields before the
    image; ``sheet`` (writer), ``jis`` (the character code) and, where the layout has one,
    ``serial`` are the ones decoding uses. Bytes not listed are unused.
    """

    name: str
    record_size: int
    header: tuple[tuple[str, str, int], ...]
    image_offset: int  # 0-based byte where the packed image starts
    height: int
    width: int
    bits: int  # bits per pixel: 4 (16 grey levels) or 1 (binary), most significant first
    file_name: re.Pattern  # the names of its record files in AIST's folder or zip
    code: str = "jis0208"  # what the ``jis`` field holds: "jis0208" (2 bytes) or "jis0201" (1)
    kana: str = "katakana"  # jis0201 layouts: which kana its JIS X 0201 kana codes stand for
    dummy_first: bool = False  # the first record of each file is a dummy (B-type)

    @property
    def image_bytes(self) -> int:
        return self.height * self.width * self.bits // 8

    @property
    def image_end(self) -> int:
        return self.image_offset + self.image_bytes

    @property
    def max_level(self) -> int:
        """The darkest ink: 15 for 4-bit images, 1 for binary ones (paper is 0)."""
        return (1 << self.bits) - 1

    @property
    def dtype(self) -> np.dtype:
        return record_dtype(self)


# G-type header, bytes 1–30 (1-based), the same in ETL8G and ETL9G: AIST's form_e8g.htm and
# form_e9g.htm; struct '>2H8sI4B4H2B' in AIST's unpack.py.
_G_HEADER = (
    ("sheet", ">u2", 0),  # 1–2 serial sheet number (one sheet = one writer)
    ("jis", ">u2", 2),  # 3–4 JIS X 0208 code of the character
    ("reading", "S8", 4),  # 5–12 JIS typical reading, e.g. b"A.HIRA  " (informative)
    ("serial", ">u4", 12),  # 13–16 serial data number
    ("eval_image", "u1", 16),  # 17 evaluation of the individual character image
    ("eval_group", "u1", 17),  # 18 evaluation of the character group
    ("sex", "u1", 18),  # 19 male-female code (JIS X 0303)
    ("age", "u1", 19),  # 20 age of writer
    ("industry", ">u2", 20),  # 21–22 industry classification code (JIS X 0403)
    ("occupation", ">u2", 22),  # 23–24 occupation classification code (JIS X 0404)
    ("gathered", ">u2", 24),  # 25–26 sheet gathering date
    ("scanned", ">u2", 26),  # 27–28 scanning date
    ("pos_y", "u1", 28),  # 29 sample position on the sheet (unpack.py calls 29 X and 30 Y;
    ("pos_x", "u1", 29),  # 30 sample position on the sheet  informative, not used here)
)
# ETL8G: form_e8g.htm, 8,199-byte records; 31–60 unused, image 61–8188 (128 wide × 127 high,
# 4 bits a pixel, two pixels a byte, high nibble first, row by row), 8189–8199 unused.
# struct '>2H8sI4B4H2B30x8128s11x' (unpack.py: 240 bits undefined, 8,128 bytes, 88 bits).
ETL8G = Layout("ETL8G", 8199, _G_HEADER, 60, 127, 128, 4, re.compile(r"ETL8G_\d+"))
# ETL9G: form_e9g.htm, the same 8,199 bytes with the image 4 bytes later: 31–64 unused, image
# 65–8192, 8193–8199 unused. struct '>2H8sI4B4H2B34x8128s7x' (unpack.py: 272 bits undefined,
# 8,128 bytes, 56 bits).
ETL9G = Layout("ETL9G", 8199, _G_HEADER, 64, 127, 128, 4, re.compile(r"ETL9G_\d+"))

# B-type header, bytes 1–8: form_e8b.htm and form_e9b.htm; struct '>2H4s' in AIST's unpack.py.
_B_HEADER = (
    ("sheet", ">u2", 0),  # 1–2 serial sheet number
    ("jis", ">u2", 2),  # 3–4 JIS X 0208 code
    ("reading", "S4", 4),  # 5–8 JIS typical reading, e.g. b"AI.M"
)
# ETL8B2: form_e8b.htm, 512-byte records, "No. of records = N+1": the first record of each
# file is a dummy; image 9–512, 2 levels, 1 bit a pixel, 64 wide × 63 high (504 bytes), 8
# pixels a byte, most significant bit first (PIL's "1" raw mode in unpack.py); 1 = ink. The
# distributed files are ETL8B2C1 … C3 (the page's table calls them ETL8B2-1 … -3).
ETL8B2 = Layout("ETL8B2", 512, _B_HEADER, 8, 63, 64, 1, re.compile(r"ETL8B2C\d+"), dummy_first=True)
# ETL9B: form_e9b.htm, 576-byte records, dummy first; image 9–512 as in ETL8B2, 513–576
# "uncertain". Files ETL9B_1 … ETL9B_5 (the page: ETL9B-1 … -5).
ETL9B = Layout("ETL9B", 576, _B_HEADER, 8, 63, 64, 1, re.compile(r"ETL9B_\d+"), dummy_first=True)

# M-type header, bytes 1–32: form_m.htm (and "Specification of ETL-1");
# struct '>H2sH6BI4H4B4x' in AIST's unpack.py.
_M_HEADER = (
    ("data_number", ">u2", 0),  # 1–2 data number
    ("char_code", "S2", 2),  # 3–4 two-character code, e.g. b"A ", b"KA", b" I" (informative)
    ("sheet", ">u2", 4),  # 5–6 serial sheet number
    ("jis", "u1", 6),  # 7 JIS X 0201 code
    ("ebcdic", "u1", 7),  # 8 EBCDIC code
    ("eval_image", "u1", 8),  # 9
    ("eval_group", "u1", 9),  # 10
    ("sex", "u1", 10),  # 11
    ("age", "u1", 11),  # 12
    ("serial", ">u4", 12),  # 13–16 serial data number
    ("industry", ">u2", 16),  # 17–18
    ("occupation", ">u2", 18),  # 19–20
    ("gathered", ">u2", 20),  # 21–22
    ("scanned", ">u2", 22),  # 23–24
    ("pos_y", "u1", 24),  # 25 sample position Y on the sheet
    ("pos_x", "u1", 25),  # 26 sample position X on the sheet
    ("level_min", "u1", 26),  # 27 minimum scanned level
    ("level_max", "u1", 27),  # 28 maximum scanned level
)
# 29–32 undefined (form_m.htm); image 33–2048: 16 levels, 4 bits a pixel, 64 wide × 63 high
# (2,016 bytes), packed as in G-type; 2049–2052 undefined (unpack.py: pad:16, pad:16,
# bytes:2016, pad:32; "Specification of ETL-1": 16 levels, 64 × 63 pixels).
# ETL1: katakana, digits, Latin capitals, symbols ("Specification of ETL-1": 99 categories, 51
# of them katakana); ETL6: katakana, digits, Latin, symbols; ETL7: hiragana, stored with the
# JIS X 0201 (katakana) codes of the same sounds, so its kana codes are read as hiragana.
ETL1 = Layout("ETL1", 2052, _M_HEADER, 32, 63, 64, 4, re.compile(r"ETL1C_\d+"), code="jis0201")
ETL6 = Layout("ETL6", 2052, _M_HEADER, 32, 63, 64, 4, re.compile(r"ETL6C_\d+"), code="jis0201")
ETL7 = Layout("ETL7", 2052, _M_HEADER, 32, 63, 64, 4, re.compile(r"ETL7[LS]C_\d+"), code="jis0201", kana="hiragana")

LAYOUTS = (ETL8G, ETL9G, ETL8B2, ETL9B, ETL1, ETL6, ETL7)
LAYOUT_BY_NAME = {layout.name: layout for layout in LAYOUTS}
DEFAULT = ETL8G  # the layout of a single file whose name is none of AIST's


def record_dtype(layout: Layout) -> np.dtype:
    """A layout's record as a numpy structured dtype (big-endian fields, unused bytes left out)."""
    names = [name for name, _, _ in layout.header] + ["image"]
    formats = [fmt for _, fmt, _ in layout.header] + [("u1", (layout.image_bytes,))]
    offsets = [off for _, _, off in layout.header] + [layout.image_offset]
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": layout.record_size})


def layout_of_name(name: str) -> Layout | None:
    """The layout whose AIST file names match ``name`` (a file's base name), or None."""
    for layout in LAYOUTS:
        if layout.file_name.fullmatch(name):
            return layout
    return None


# ETL8G, kept as module constants: the rest of the project and its tests use them.
RECORD_SIZE = ETL8G.record_size
IMAGE_HEIGHT, IMAGE_WIDTH = ETL8G.height, ETL8G.width
LEVELS = 16  # 4 bits per pixel: 0 = paper, 15 = darkest ink
_PACKED = ETL8G.image_bytes  # 8,128 bytes, two pixels per byte
RECORD_DTYPE = record_dtype(ETL8G)
assert RECORD_DTYPE.itemsize == RECORD_SIZE == record_dtype(ETL9G).itemsize


class EtlFormatError(UserError):
    """A path that does not hold readable ETL records."""


@dataclass
class EtlRecords:
    """Decoded records, in file order."""

    images: np.ndarray  # (N, H, W) uint8, 0..max_level exactly as stored (native size)
    jis: np.ndarray  # (N,) int JIS X 0208 codes (ETL1/6/7's JIS X 0201 codes mapped)
    sheet: np.ndarray  # (N,) int sheet numbers (writers)
    serial: np.ndarray  # (N,) int serial data numbers (B-type: the record's place in its file)
    files: tuple[str, ...]  # the source of each part, in the order read
    skipped: int = 0  # records not kept because their code was not asked for
    duplicates: int = 0  # kept records dropped because an earlier one had the same bytes
    layout: str = ETL8G.name  # the layout every record was read with

    def __len__(self) -> int:
        return len(self.jis)

    @property
    def max_level(self) -> int:
        """The level of the darkest ink in ``images`` (15, or 1 for binary B-type images)."""
        return LAYOUT_BY_NAME[self.layout].max_level


# ---------------------------------------------------------------- JIS X 0201 → JIS X 0208


def _jis_x0208(char: str) -> int:
    raw = char.encode("euc_jp")
    if len(raw) != 2:
        raise ValueError(char)
    return ((raw[0] & 0x7F) << 8) | (raw[1] & 0x7F)


def _x0201_table(kana: str) -> np.ndarray:
    """(256,) JIS X 0208 code of each JIS X 0201 byte (0: none), kana read as ``kana``."""
    table = np.zeros(256, dtype=np.int32)
    # Roman half (JIS X 0201): ASCII, except 0x5C YEN SIGN and 0x7E OVERLINE; full-width forms.
    roman = {0x5C: "￥", 0x7E: "￣", 0x27: "’", 0x2D: "−", 0x22: "”", 0x60: "‘"}
    for byte in range(0x21, 0x7F):
        char = roman.get(byte, chr(byte + 0xFEE0))
        try:
            table[byte] = _jis_x0208(char)
        except (UnicodeEncodeError, ValueError):
            pass
    # Kana half 0xA1–0xDF: half-width forms, full width by NFKC. Like AIST's unpack.py for
    # M-type, the small-kana codes 0xA8 (ｨ) and 0xAA (ｪ) stand for ヰ and ヱ, which JIS X 0201
    # lacks (ETL1/6/7 hold no small kana).
    for byte in range(0xA1, 0xE0):
        char = unicodedata.normalize("NFKC", bytes([byte]).decode("cp932"))
        char = {0xA8: "ヰ", 0xAA: "ヱ", 0xDE: "゛", 0xDF: "゜"}.get(byte, char)  # marks: spacing forms
        code = _jis_x0208(char)
        if kana == "hiragana" and 0x2521 <= code <= 0x2573:  # katakana row 5 → hiragana row 4
            code -= 0x0100
        table[byte] = code
    return table


_X0201 = {"katakana": _x0201_table("katakana"), "hiragana": _x0201_table("hiragana")}


def jis_codes(layout: Layout, raw_codes: np.ndarray) -> np.ndarray:
    """A layout's stored character codes → JIS X 0208 codes (int32)."""
    if layout.code == "jis0201":
        return _X0201[layout.kana][np.asarray(raw_codes, dtype=np.uint8)]
    return np.asarray(raw_codes).astype(np.int32)


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One ETL record file: on disk, or a member of a zip."""

    path: Path
    member: str | None = None
    size: int = 0  # bytes
    layout: Layout = ETL8G

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    def read_into(self, buf: bytearray) -> memoryview:
        """Read the whole file into the start of ``buf`` (reused across files)."""
        view = memoryview(buf)[: self.size]
        if self.member is None:
            with open(self.path, "rb") as f:
                got = f.readinto(view)
        else:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                got = 0
                while got < self.size and (n := f.readinto(view[got:])):
                    got += n
        if got != self.size:
            raise OSError(f"read {got:,} of {self.size:,} bytes")
        return view


def _is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)


_NAMES = "ETL8G_nn, ETL9G_nn, ETL8B2Cn, ETL9B_n, ETL1C_nn, ETL6C_nn, ETL7LC_n or ETL7SC_n"
_POINT_AT = (
    "Point data.root at one ETL set as AIST ships it: its zip (e.g. ETL8G.zip), the folder it "
    "unpacks to, or one of its record files."
)


def _one_layout(where: Path, named: list[tuple[str, Layout]]) -> Layout:
    """The layout of files (display name, layout); an error naming them if they mix layouts."""
    by_layout: dict[str, list[str]] = {}
    for shown, layout in named:
        by_layout.setdefault(layout.name, []).append(shown)
    if len(by_layout) > 1:
        parts = "; ".join(
            f"{name}: {', '.join(sorted(files)[:3])}{' …' if len(files) > 3 else ''}"
            f" ({len(files)} file{'s' if len(files) > 1 else ''})"
            for name, files in by_layout.items()
        )
        raise EtlFormatError(
            f"{where}: mixes record files of different ETL layouts ({parts}). One data.root "
            "reads one layout: move the others elsewhere, or point data.root at one set's folder."
        )
    return LAYOUT_BY_NAME[next(iter(by_layout))]


def list_sources(path: str | os.PathLike) -> list[Source]:
    """The ETL record files that ``path`` names, in name order, all of one layout.

    ``path`` may be one record file (its layout from its name; any other name is read as
    ETL8G), a folder (its record files with AIST's names, searched recursively) or a zip (its
    members with those names). Only the directory or the zip's index is read here; a member
    that fails its CRC check is reported when it is read.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file or folder. Point data.root at your unpacked ETL folder "
            "(e.g. ETL8G with ETL8G_01 … ETL8G_33), one record file, or the zip from AIST's ETL "
            "Character Database site."
        )
    if path.is_dir():
        found = [(p, layout) for p in path.rglob("ETL*") if (layout := layout_of_name(p.name)) and p.is_file()]
        if not found:
            raise EtlFormatError(f"{path}: no ETL record files in this folder (looked for {_NAMES}). {_POINT_AT}")
        layout = _one_layout(path, [(str(p.relative_to(path)), lay) for p, lay in found])
        files = sorted((p for p, _ in found), key=lambda p: (p.name, str(p)))
        return [Source(p, size=p.stat().st_size, layout=layout) for p in files]
    if _is_zip(path):
        try:
            with zipfile.ZipFile(path) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise EtlFormatError(
                f"{path}: not a readable zip ({err}). The download is probably incomplete: "
                "download the zip again, or unpack it and point data.root at the folder."
            ) from err
        found = [(i, layout) for i in infos if (layout := layout_of_name(i.filename.rsplit("/", 1)[-1]))]
        if not found:
            raise EtlFormatError(
                f"{path}: this zip holds no ETL record files (looked for {_NAMES}). Is it one "
                "of AIST's ETL zips (e.g. ETL8G.zip)?"
            )
        layout = _one_layout(path, [(i.filename, lay) for i, lay in found])
        members = sorted((i for i, _ in found), key=lambda i: (i.filename.rsplit("/", 1)[-1], i.filename))
        return [Source(path, i.filename, i.file_size, layout) for i in members]
    return [Source(path, size=path.stat().st_size, layout=layout_of_name(path.name) or DEFAULT)]


# ---------------------------------------------------------------- checks


def _fits(size: int, layout: Layout) -> bool:
    return size > 0 and size % layout.record_size == 0


def check_size(size: int, name: str, layout: Layout = ETL8G) -> int:
    """The number of records in a file of ``size`` bytes (a dummy included), or an error."""
    if size == 0:
        raise EtlFormatError(f"{name}: the file is empty. Download the {layout.name} set again.")
    whole, extra = divmod(size, layout.record_size)
    if extra:
        others = sorted({lay.name for lay in LAYOUTS if lay.record_size != layout.record_size and _fits(size, lay)})
        hint = f" (its size is a whole number of {' or '.join(others)} records: is it one?)." if others else "."
        raise EtlFormatError(
            f"{name}: {size:,} bytes is not a whole number of {layout.record_size:,}-byte "
            f"{layout.name} records ({whole:,} records and {extra:,} bytes over). The file looks "
            f"truncated or is not an {layout.name} file{hint} Download the zip again and "
            "re-extract it" + (", or give the file its AIST name." if others else ".")
        )
    return whole


# The bytes where ETL8G and ETL9G differ (form_e8g.htm, form_e9g.htm): image in one, unused
# in the other.
_ETL8G_ONLY = slice(ETL8G.image_offset, ETL9G.image_offset)  # 61–64: top row, first 8 pixels
_ETL9G_ONLY = slice(ETL8G.image_end, ETL9G.image_end)  # 8189–8192: bottom row, last 8 pixels
_UNUSED_IN_BOTH = slice(ETL9G.image_end, ETL8G.record_size)  # 8193–8199


def g_type_content(raw: np.ndarray) -> str | None:
    """Which G-type layout records (N, 8199 bytes) look like by content: "ETL8G", "ETL9G" or
    None (nothing tells).

    Unused bytes are expected to be zero. In ETL9G, bytes 61–64 are zero in every record while
    8189–8192 (the last 8 pixels of its image) hold ink or scanner noise in some record; in
    ETL8G it is the other way round. A top-left corner blank in every record is common in
    ETL8G (the etl-dev ETL8B2 files: all but 12 of 3,656 records), so it takes both: one side
    zero throughout AND the other non-zero somewhere, and only where 8193–8199, unused in
    both, are zero throughout. Images blank in both corners of every record cannot be told
    apart: read as the file's name says.
    """
    if raw[:, _UNUSED_IN_BOTH].any():
        return None
    top, bottom = raw[:, _ETL8G_ONLY].any(), raw[:, _ETL9G_ONLY].any()
    if bottom and not top:
        return ETL9G.name
    if top and not bottom:
        return ETL8G.name
    return None


def _bad_codes(layout: Layout, recs: np.ndarray) -> np.ndarray:
    """Mask of records whose header is impossible in ``layout``."""
    if layout.code == "jis0208":  # two 7-bit bytes, each 0x21–0x7E
        hi, lo = recs["jis"] >> 8, recs["jis"] & 0xFF
        return (hi < 0x21) | (hi > 0x7E) | (lo < 0x21) | (lo > 0x7E)
    code = recs["jis"]  # a JIS X 0201 graphic character, and a two-character ASCII code
    off = recs.dtype.fields["char_code"][1]
    chars = recs.view(np.uint8).reshape(len(recs), layout.record_size)[:, off : off + 2]
    return ((code < 0x20) | (code > 0xDF) | ((code > 0x7E) & (code < 0xA1))) | ((chars < 0x20) | (chars > 0x7E)).any(
        axis=1
    )


# A real M-type file may hold a stray record; another layout's bytes read as M-type records
# break these rules in most records.
_M_TOLERANCE = 0.01


def _looks_like(src: Source) -> list[str]:
    """Other layouts whose record size fits the file (for messages)."""
    return [lay.name for lay in LAYOUTS if lay is not src.layout and _fits(src.size, lay)]


def _why(src: Source) -> str:
    base = (src.member or src.path.name).rsplit("/", 1)[-1]
    return "from its name" if layout_of_name(base) else "the default for other names"


def check_records(src: Source, recs: np.ndarray) -> None:
    """Refuse records that cannot be ``src.layout``'s (an error naming the file and what the
    content looks like)."""
    layout = src.layout
    if len(recs) == 0:
        return
    if layout.record_size == ETL8G.record_size:
        seen = g_type_content(recs.view(np.uint8).reshape(len(recs), layout.record_size))
        if seen is not None and seen != layout.name:
            other = LAYOUT_BY_NAME[seen]
            raise EtlFormatError(
                f"{src.name}: read as {layout.name} ({_why(src)}), but its records have the "
                f"{seen} layout (image at bytes {other.image_offset + 1}–{other.image_end}, not "
                f"{layout.image_offset + 1}–{layout.image_end}): it looks like an {seen} file. "
                f"Give it its AIST name ({seen}_nn) or point data.root at the right files."
            )
    bad = _bad_codes(layout, recs)
    allowed = int(len(recs) * _M_TOLERANCE) if layout.code == "jis0201" else 0
    if int(bad.sum()) > allowed:
        k = int(np.flatnonzero(bad)[0])
        field = recs["jis"][k]
        what = (
            f"JIS X 0208 code {int(field):#06x}"
            if layout.code == "jis0208"
            else f"JIS X 0201 code {int(field):#04x} and code {bytes(recs['char_code'][k])!r}"
        )
        number = k + 1 + (1 if layout.dummy_first else 0)  # 1-based, the dummy counted
        others = _looks_like(src)
        hint = f" Its size would also fit {', '.join(others)} records." if others else ""
        raise EtlFormatError(
            f"{src.name}: not {layout.name} records: {int(bad.sum()):,} of {len(recs):,} have a "
            f"header no {layout.name} record has (record {number} of the file: {what}).{hint} "
            f"It was read as {layout.name} ({_why(src)}): give it its AIST name, or download it "
            "again."
        )


# ---------------------------------------------------------------- decoding

_BLOCK = 64  # records unpacked at a time: the temporaries stay in the CPU cache


def unpack_images(packed: np.ndarray, out: np.ndarray | None = None, layout: Layout = ETL8G) -> np.ndarray:
    """(N, image bytes) packed → (N, H, W) uint8 levels (into ``out``).

    4-bit: two pixels a byte, high nibble first; 1-bit: eight a byte, most significant bit
    first; rows top to bottom. The 4-bit path widens each byte to the two output bytes as one
    little-endian uint16 ``hi | lo << 8``, in blocks that stay in cache: about 3× faster than
    two strided ufuncs over the whole array.
    """
    n = packed.shape[0]
    if out is None:
        out = np.empty((n, layout.height, layout.width), dtype=np.uint8)
    flat = out.reshape(n, layout.height * layout.width)
    if layout.bits == 1:
        for i in range(0, n, 1024):
            flat[i : i + 1024] = np.unpackbits(packed[i : i + 1024], axis=1)
        return out
    wide = flat.view("<u2")  # (n, image bytes): one little-endian uint16 a packed byte
    low = np.empty((min(n, _BLOCK), packed.shape[1]), dtype=np.uint16)
    for i in range(0, n, _BLOCK):
        w, t = wide[i : i + _BLOCK], low[: min(_BLOCK, n - i)]
        np.copyto(w, packed[i : i + _BLOCK], casting="unsafe")
        np.bitwise_and(w, 0x0F, out=t)
        np.right_shift(w, 4, out=w)  # first pixel: high nibble, in the first (low) byte
        np.left_shift(t, 8, out=t)  # second pixel: low nibble, in the second byte
        np.bitwise_or(w, t, out=w)
    return out


def record_keys(raw: np.ndarray, layout: Layout = ETL8G) -> np.ndarray:
    """(N, k) bytes per record: every byte outside its image, and a 64-bit sum of its image.

    Equal records have equal keys, so only records with equal keys need a full comparison.
    """
    image = np.ascontiguousarray(raw[:, layout.image_offset : layout.image_end])
    checksum = _checksum(image)
    rest = (raw[:, : layout.image_offset], raw[:, layout.image_end :])
    return np.concatenate([*rest, checksum.view(np.uint8).reshape(-1, 8)], axis=1)


def _checksum(rows: np.ndarray) -> np.ndarray:
    """(N,) uint64 wrap-around sum of each row's 8-byte words (rows zero-padded to 8 bytes)."""
    rows = rows.reshape(len(rows), -1)
    if rows.shape[1] % 8:
        rows = np.pad(rows, ((0, 0), (0, 8 - rows.shape[1] % 8)))
    return np.ascontiguousarray(rows).view("<u8").sum(axis=1, dtype=np.uint64)


def first_occurrences(keys: np.ndarray, images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Mask of the records that do not repeat an earlier record (the first copy is kept).

    ``keys`` from ``record_keys``. A record whose key an earlier one has is compared, pixel for
    pixel, with the first record of that key (vectorised, ``chunk`` at a time); in the rare
    case that it differs, with every earlier record of that key. Equal means: the same bytes.
    """
    keep = np.ones(len(keys), dtype=bool)
    if len(keys) < 2:
        return keep
    whole = np.ascontiguousarray(keys).view(f"V{keys.shape[1]}").ravel()
    _, first, group = np.unique(whole, return_index=True, return_inverse=True)
    first = first[group]  # for each record, the first record with its key
    later = np.flatnonzero(first != np.arange(len(keys)))
    axes = tuple(range(1, images.ndim))
    for part in np.array_split(later, len(later) // chunk + 1):
        keep[part] = ~(images[part] == images[first[part]]).all(axis=axes)
    for i in np.flatnonzero(keep[later]):  # same key, other pixels: a checksum collision
        i = later[i]
        earlier = np.flatnonzero(keep[:i] & (group[:i] == group[i]))
        keep[i] = not any(np.array_equal(images[i], images[j]) for j in earlier)
    return keep


def drop_duplicates(headers: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Mask of the records to keep: each record whose bytes an earlier record has is dropped.

    ``headers`` (N, k): each record's bytes outside its image. Real ETL records differ in
    their headers (serial numbers), so only records whose header repeats (a copied file)
    need an image checksum and a comparison (``first_occurrences``); the rest cost one sort.
    """
    keep = np.ones(len(headers), dtype=bool)
    if len(headers) < 2:
        return keep
    whole = np.ascontiguousarray(headers).view(f"V{headers.shape[1]}").ravel()
    _, group, counts = np.unique(whole, return_inverse=True, return_counts=True)
    repeated = np.flatnonzero(counts[group] > 1)
    if len(repeated):
        sums = _checksum(images[repeated])
        keys = np.concatenate([headers[repeated], sums.view(np.uint8).reshape(-1, 8)], axis=1)
        keep[repeated] = first_occurrences(keys, images[repeated])
    return keep


def _header_bytes(raw: np.ndarray, layout: Layout) -> np.ndarray:
    """(N, record size − image bytes): every byte of each record outside its image (a copy)."""
    return np.concatenate([raw[:, : layout.image_offset], raw[:, layout.image_end :]], axis=1)


# Errors that reading one file or zip member can end in (zlib.error and lzma.LZMAError for a
# corrupt compressed stream, BadZipFile for a bad CRC, NotImplementedError for an unknown
# compression method, RuntimeError for an encrypted member).
_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError, RuntimeError)


def read_source(src: Source, buf: bytearray, n: int) -> np.ndarray:
    """The records of ``src`` (``n`` in all, its dummy left out) as a structured array in
    ``buf``, checked against its layout, or an error naming it."""
    layout = src.layout
    try:
        recs = np.frombuffer(src.read_into(buf), dtype=layout.dtype, count=n)
    except _READ_ERRORS as err:
        raise EtlFormatError(
            f"{src.name}: cannot be read ({err}). The file is damaged or incomplete: "
            f"download {src.path.name if src.member else layout.name + '.zip'} again "
            "(or unpack it and point data.root at the folder)."
        ) from err
    if layout.dummy_first:
        recs = recs[1:]  # "No. of records = N+1": the first is a dummy (AIST's B-type pages)
    check_records(src, recs)
    return recs


@dataclass
class _Part:
    """What one file contributes (copies: the read buffer is reused for the next file)."""

    jis: np.ndarray
    sheet: np.ndarray
    serial: np.ndarray
    headers: np.ndarray  # every byte outside each record's image, for dropping duplicates
    images: np.ndarray | None  # with a filter: the kept records' images
    skipped: int


def _decode(
    src: Source, n: int, kept_codes: np.ndarray | None, out: np.ndarray | None, buffers: threading.local
) -> _Part:
    """Read, check, filter and unpack one file: into ``out`` (no filter) or a new array."""
    layout = src.layout
    buf = getattr(buffers, "buf", None)
    if buf is None or len(buf) < src.size:
        buf = buffers.buf = bytearray(src.size)
    recs = read_source(src, buf, n)
    codes_here = jis_codes(layout, recs["jis"])
    raw = recs.view(np.uint8).reshape(len(recs), layout.record_size)
    place = np.arange(len(recs))
    skipped, images = 0, None
    if kept_codes is not None:
        place = np.flatnonzero(np.isin(codes_here, kept_codes))
        skipped = len(recs) - len(place)
        recs, raw, codes_here = recs[place], raw[place], codes_here[place]  # copies
        images = unpack_images(recs["image"], layout=layout)
    else:
        unpack_images(recs["image"], out, layout)
    if "serial" in recs.dtype.names:
        serial = recs["serial"].astype(np.int64)
    else:  # B-type records have no serial number: their place in the file (1 = first)
        serial = place.astype(np.int64) + (2 if layout.dummy_first else 1)
    return _Part(codes_here, recs["sheet"].astype(np.int32), serial, _header_bytes(raw, layout), images, skipped)


def _workers(sources: list[Source]) -> int:
    """Threads for decoding files side by side: numpy and file reads release the GIL."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(len(sources), cores or 1, 8))


def read_etl(path: str | os.PathLike, codes: Collection[int] | None = None) -> EtlRecords:
    """Decode every ETL record under ``path`` (a file, a folder or a zip), in file order.

    With ``codes`` given (JIS X 0208 codes, e.g. a class set's ``jis_to_label``), only
    records of those codes are kept (and only their images are unpacked); the others are
    counted in ``skipped``. Without it nothing is filtered. A kept record whose bytes equal an
    earlier one's (a file read twice) is dropped and counted in ``duplicates``.

    Files are decoded side by side by a few threads (one reused read buffer each); without a
    filter every image is unpacked straight into its place in the one output array. An error
    is the first file's, in file order.
    """
    sources = list_sources(path)
    layout = sources[0].layout
    counts = [check_size(src.size, src.name, layout) for src in sources]
    kept_codes = None if codes is None else np.fromiter(codes, dtype=np.int32)
    sizes = [n - (1 if layout.dummy_first else 0) for n in counts]
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    shape = (layout.height, layout.width)
    # Without a filter the output size is known: one allocation, no concatenation.
    images = np.empty((starts[-1], *shape), np.uint8) if kept_codes is None else None
    buffers = threading.local()
    with ThreadPoolExecutor(_workers(sources), thread_name_prefix="etl-decode") as pool:
        futures = [
            pool.submit(_decode, src, n, kept_codes, None if images is None else images[start:end], buffers)
            for src, n, start, end in zip(sources, counts, starts, starts[1:])
        ]
        try:
            parts = [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()
    if images is None:
        kept = [p.images for p in parts if len(p.images)]
        images = np.concatenate(kept) if kept else np.empty((0, *shape), np.uint8)
    out = EtlRecords(
        images=images,
        jis=np.concatenate([p.jis for p in parts]).astype(np.int32),
        sheet=np.concatenate([p.sheet for p in parts]),
        serial=np.concatenate([p.serial for p in parts]),
        files=tuple(src.name for src in sources),
        skipped=sum(p.skipped for p in parts),
        layout=layout.name,
    )
    keep = drop_duplicates(np.concatenate([p.headers for p in parts]), out.images)
    if not keep.all():
        out.images, out.jis = out.images[keep], out.jis[keep]
        out.sheet, out.serial = out.sheet[keep], out.serial[keep]
        out.duplicates = int(len(keep) - keep.sum())
    return out


def read_etl8g(path: str | os.PathLike, jis: Collection[int] | None = None) -> EtlRecords:
    """``read_etl`` under its first name: any supported layout, not only ETL8G."""
    return read_etl(path, codes=jis)


# ---------------------------------------------------------------- writing


def pack_records(
    images: np.ndarray,
    jis: np.ndarray,
    sheet: np.ndarray,
    serial: np.ndarray | None = None,
    reading: list[bytes] | None = None,
    layout: Layout = ETL8G,
) -> bytes:
    """Encode (N, H, W) levels 0..max_level and their labels as ``layout`` records.

    ``jis`` holds the codes as the layout stores them (JIS X 0208; for ETL1/6/7 the JIS X 0201
    byte); ``reading`` is the JIS typical reading (G/B-type) or the two-character code
    (M-type). No dummy record is added (``write_etl`` adds it).
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (layout.height, layout.width):
        raise ValueError(f"images must be (N, {layout.height}, {layout.width}), got {images.shape}")
    if images.size and (images.min() < 0 or images.max() > layout.max_level):
        raise ValueError(f"image levels must lie in 0..{layout.max_level}")
    n = images.shape[0]
    recs = np.zeros(n, dtype=layout.dtype)
    recs["sheet"] = sheet
    recs["jis"] = jis
    text = "char_code" if layout.code == "jis0201" else "reading"
    width = recs.dtype[text].itemsize
    recs[text] = reading if reading is not None else [b" " * width] * n
    if "serial" in recs.dtype.names:
        recs["serial"] = np.arange(1, n + 1) if serial is None else serial
    if "data_number" in recs.dtype.names:
        recs["data_number"] = np.arange(1, n + 1)
    flat = images.astype(np.uint8).reshape(n, -1)
    if layout.bits == 1:
        recs["image"] = np.packbits(flat, axis=1)
    else:
        recs["image"] = (flat[:, 0::2] << 4) | flat[:, 1::2]
    return recs.tobytes()


def write_etl(path, layout: Layout, images, jis, sheet, serial=None, reading=None) -> None:
    """Write records as one ``layout`` file (atomically), with a dummy first where it has one."""
    data = pack_records(images, jis, sheet, serial, reading, layout)
    if layout.dummy_first:
        data = bytes(layout.record_size) + data
    write_atomic(path, data)


def write_etl8g(path, images, jis, sheet, serial=None) -> None:
    """Write records as one ETL8G file (atomically)."""
    write_etl(path, ETL8G, images, jis, sheet, serial)
