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

import contextlib
import hashlib
import logging
import lzma
import mmap
import os
import re
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maist.errors import UserError
from maist.files import write_atomic

log = logging.getLogger(__name__)

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


# No ETL file is larger: ETL9G's are 12,144 records of 8,199 bytes (99.6 MB), ETL9B's 121,441 of 576
# (70 MB). A larger file or zip member (a zip bomb, a disk image, /dev/zero behind a link) is
# refused before it is read.
MAX_FILE_BYTES = 128 * 1024**2
CHUNK_RECORDS = 1024  # records read and decoded at a time: a file is never held whole


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
    keys: np.ndarray | None = None  # (N,) S16: each record's identity (:func:`record_keys`)
    pixels: np.ndarray | None = None  # (N,) S16: each record's image alone (:func:`pixel_keys`)
    skipped: int = 0  # records not kept because their code was not asked for
    duplicates: int = 0  # kept records dropped because an earlier one had the same bytes
    same_pixels: int = 0  # records kept whose pixels an earlier record has under another header
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

    def chunks(self, chunk_bytes: int) -> Iterator[memoryview]:
        """The file's bytes, ``chunk_bytes`` at a time (a zip member inflated as it is read), into
        one reused buffer: each chunk is valid until the next is read. Exactly ``size`` bytes."""
        buf = memoryview(bytearray(min(chunk_bytes, self.size)))
        with contextlib.ExitStack() as stack:
            if self.member is None:
                f = stack.enter_context(open(self.path, "rb"))
            else:
                f = stack.enter_context(stack.enter_context(zipfile.ZipFile(self.path)).open(self.member))
            left = self.size
            while left:
                want, got = min(len(buf), left), 0
                while got < want and (n := f.readinto(buf[got:want])):
                    got += n
                if got != want:
                    raise OSError(f"read {self.size - left + got:,} of {self.size:,} bytes")
                left -= got
                yield buf[:got]


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


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a pipe"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    kinds += ((stat.S_ISSOCK, "a socket"),)
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def _regular(path: Path, what: str = "file") -> int:
    """The size of the regular file at ``path`` (links followed); anything else (a pipe, a device
    such as /dev/zero, a dangling link) is refused before a byte is read."""
    try:
        st = path.stat()
    except OSError as err:
        dangling = " (a link to nothing)" if path.is_symlink() else ""
        raise EtlFormatError(f"{path}: cannot be read{dangling} ({err.strerror or err}). {_POINT_AT}") from None
    if not stat.S_ISREG(st.st_mode):
        raise EtlFormatError(f"{path}: {_kind(st.st_mode)}, not a {what} of ETL records. {_POINT_AT}")
    return st.st_size


def _record_files(folder: Path) -> list[Path]:
    """The files under ``folder`` named like AIST's record files, links to sub-folders followed
    (each real folder once, so a link back up is no loop)."""
    seen, found = set(), []
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        found += [Path(top) / name for name in sorted(files) if layout_of_name(name)]
    return found


def list_sources(path: str | os.PathLike) -> list[Source]:
    """The ETL record files that ``path`` names, in name order, all of one layout.

    ``path`` may be one record file (its layout from its name; any other name is read as
    ETL8G), a folder (its record files with AIST's names, searched recursively, links to
    sub-folders followed) or a zip (its members with those names). Only the directory or the
    zip's index is read here; anything that is not a regular file or folder is refused, and so is
    a file larger than any ETL file; a member that fails its CRC check is reported when it is read.
    """
    path = Path(path).expanduser()
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(
            f"{path}: no such file or folder. Point data.root at your unpacked ETL folder "
            "(e.g. ETL8G with ETL8G_01 … ETL8G_33), one record file, or the zip from AIST's ETL "
            "Character Database site."
        )
    if path.is_dir():
        found = [(p, layout_of_name(p.name)) for p in _record_files(path)]
        if not found:
            raise EtlFormatError(f"{path}: no ETL record files in this folder (looked for {_NAMES}). {_POINT_AT}")
        layout = _one_layout(path, [(str(p.relative_to(path)), lay) for p, lay in found])
        files = sorted((p for p, _ in found), key=lambda p: (p.name, str(p)))
        return [Source(p, size=_regular(p), layout=layout) for p in files]
    size = _regular(path)
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
    return [Source(path, size=size, layout=layout_of_name(path.name) or DEFAULT)]


# ---------------------------------------------------------------- checks


def _fits(size: int, layout: Layout) -> bool:
    return size > 0 and size % layout.record_size == 0


def check_size(size: int, name: str, layout: Layout = ETL8G) -> int:
    """The number of records in a file of ``size`` bytes (a dummy included), or an error."""
    if size == 0:
        raise EtlFormatError(f"{name}: the file is empty. Download the {layout.name} set again.")
    if size > MAX_FILE_BYTES:
        raise EtlFormatError(
            f"{name}: {size / 1e6:,.0f} MB is larger than any ETL file (at most {MAX_FILE_BYTES / 1e6:.0f} MB, "
            f"ETL9G's); not read. Point data.root at the files of AIST's {layout.name} set."
        )
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


def g_type_content(unused: bool, top: bool, bottom: bool) -> str | None:
    """Which G-type layout a file's records look like by content: "ETL8G", "ETL9G" or None
    (nothing tells), from whether any record has ink or data in the unused bytes 8193–8199
    (``unused``), in bytes 61–64 (``top``: image in ETL8G, unused in ETL9G) and in bytes
    8189–8192 (``bottom``: the reverse).

    Unused bytes are expected to be zero. In ETL9G, bytes 61–64 are zero in every record while
    8189–8192 (the last 8 pixels of its image) hold ink or scanner noise in some record; in
    ETL8G it is the other way round. A top-left corner blank in every record is common in
    ETL8G (the etl-dev ETL8B2 files: all but 12 of 3,656 records), so it takes both: one side
    zero throughout AND the other non-zero somewhere, and only where 8193–8199, unused in
    both, are zero throughout. Images blank in both corners of every record cannot be told
    apart: read as the file's name says.
    """
    if unused:
        return None
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


class RecordCheck:
    """Refuses records that cannot be ``src.layout``'s, over a whole file read chunk by chunk:
    :meth:`add` each chunk's records (the dummy left out), then :meth:`finish` raises an error
    naming the file and what its content looks like (the content of a G-type file is judged on all
    of it: see :func:`g_type_content`)."""

    def __init__(self, src: Source):
        self.src, self.layout = src, src.layout
        self.count = self.bad = 0
        self.first_bad: str | None = None
        self.unused = self.top = self.bottom = False  # G-type: ink seen where each layout has none

    def add(self, recs: np.ndarray) -> None:
        layout = self.layout
        if layout.record_size == ETL8G.record_size and len(recs):
            raw = recs.view(np.uint8).reshape(len(recs), layout.record_size)
            self.unused |= bool(raw[:, _UNUSED_IN_BOTH].any())
            self.top |= bool(raw[:, _ETL8G_ONLY].any())
            self.bottom |= bool(raw[:, _ETL9G_ONLY].any())
        bad = _bad_codes(layout, recs)
        if self.first_bad is None and bad.any():
            k = int(np.flatnonzero(bad)[0])
            field = recs["jis"][k]
            what = (
                f"JIS X 0208 code {int(field):#06x}"
                if layout.code == "jis0208"
                else f"JIS X 0201 code {int(field):#04x} and code {bytes(recs['char_code'][k])!r}"
            )
            number = self.count + k + 1 + (1 if layout.dummy_first else 0)  # 1-based, the dummy counted
            self.first_bad = f"record {number} of the file: {what}"
        self.bad += int(bad.sum())
        self.count += len(recs)

    def finish(self) -> None:
        src, layout = self.src, self.layout
        g_type = layout.record_size == ETL8G.record_size and self.count
        seen = g_type_content(self.unused, self.top, self.bottom) if g_type else None
        if seen is not None and seen != layout.name:
            other = LAYOUT_BY_NAME[seen]
            raise EtlFormatError(
                f"{src.name}: read as {layout.name} ({_why(src)}), but its records have the "
                f"{seen} layout (image at bytes {other.image_offset + 1}–{other.image_end}, not "
                f"{layout.image_offset + 1}–{layout.image_end}): it looks like an {seen} file. "
                f"Give it its AIST name ({seen}_nn) or point data.root at the right files."
            )
        allowed = int(self.count * _M_TOLERANCE) if layout.code == "jis0201" else 0
        if self.bad > allowed:
            others = _looks_like(src)
            hint = f" Its size would also fit {', '.join(others)} records." if others else ""
            raise EtlFormatError(
                f"{src.name}: not {layout.name} records: {self.bad:,} of {self.count:,} have a "
                f"header no {layout.name} record has ({self.first_bad}).{hint} "
                f"It was read as {layout.name} ({_why(src)}): give it its AIST name, or download it "
                "again."
            )


def check_dummy(src: Source, dummy: np.ndarray) -> None:
    """A B-type file starts with a dummy record (AIST: "No. of records = N+1"), which is skipped;
    warn when it looks like a character instead (a known code, a sheet, ink), as in a file re-packed
    without its dummy, whose first character is then lost."""
    real = not _bad_codes(src.layout, dummy).any() and int(dummy["sheet"][0]) > 0 and dummy["image"].any()
    if real:
        log.warning(
            "%s: its first record, skipped as %s's dummy record, looks like a character (JIS %#06x, sheet %d): "
            "if this file was written without the dummy, that record is lost (AIST's %s files start with one)",
            src.name,
            src.layout.name,
            int(dummy["jis"][0]),
            int(dummy["sheet"][0]),
            src.layout.name,
        )


# ---------------------------------------------------------------- decoding

_BLOCK = 64  # records unpacked at a time: the temporaries stay in the CPU cache
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map every page in one call


def filled_array(shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    """An uninitialised array for a decode that writes every element of it. Where the system allows,
    its memory is anonymous pages mapped all at once (``MAP_POPULATE``) instead of page by page on
    first write, without numpy's request for transparent huge pages: on a first call in a process,
    faulting in new memory (and compacting it into huge pages) can cost more than the decoding
    itself (``benchmarks.bench_decode`` prints the first call beside the later ones)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if not _POPULATE or size < 1 << 22:  # small ones come from the allocator's reused memory
        return np.empty(shape, dtype)
    pages = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
    return np.frombuffer(pages, dtype=dtype).reshape(shape)


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


def pixel_keys(packed: np.ndarray) -> np.ndarray:
    """(n,) S16: a 128-bit digest of each record's packed image (equal pixels, equal digests)."""
    return np.array([hashlib.sha1(row, usedforsecurity=False).digest()[:16] for row in packed], dtype="S16")


def record_keys(headers: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(n,) S16: each record's identity, a digest of every byte outside its image (``headers``,
    (n, k) uint8) and of its pixels (:func:`pixel_keys`): equal keys mean the same bytes."""
    return np.array(
        [hashlib.sha1(h.tobytes() + p, usedforsecurity=False).digest()[:16] for h, p in zip(headers, pixels)],
        dtype="S16",
    )


class Duplicates:
    """The one rule for copies, over every record read so far, in order: a record whose bytes
    (header and image: its :func:`record_keys`) an earlier one has is a copy, dropped and counted
    in ``dropped`` (a copied ``ETL8G_nn`` in a sub-folder, one zip member under two paths, a test
    root inside the training root); one whose pixels an earlier record has under another header is
    kept and counted in ``same_pixels``. ``keys``/``pixels`` start it with records already read."""

    def __init__(self, keys=(), pixels=()):
        self.keys, self.pixels = set(np.asarray(keys, "S16").tolist()), set(np.asarray(pixels, "S16").tolist())
        self.dropped = self.same_pixels = 0

    def first_copies(self, keys: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """Mask of the records (``keys``, ``pixels``: (n,) S16) to keep; remembers them."""
        keep = np.ones(len(keys), dtype=bool)
        for i, (key, pix) in enumerate(zip(keys.tolist(), pixels.tolist())):
            if key in self.keys:
                keep[i] = False
                continue
            self.keys.add(key)
            if pix in self.pixels:
                self.same_pixels += 1
            else:
                self.pixels.add(pix)
        self.dropped += int(len(keep) - keep.sum())
        return keep


@dataclass
class Chunk:
    """Up to :data:`CHUNK_RECORDS` records of one file that a class set keeps, decoded (the others
    counted in ``skipped``)."""

    images: np.ndarray  # (n, H, W) uint8 levels 0..max_level, as stored
    jis: np.ndarray  # (n,) int32 JIS X 0208 codes
    sheet: np.ndarray  # (n,) int64 writers
    serial: np.ndarray  # (n,) int64 serial numbers (B-type: the record's place in its file, 1 = first)
    keys: np.ndarray  # (n,) S16 record identities (record_keys)
    pixels: np.ndarray  # (n,) S16 image digests (pixel_keys)
    skipped: int


# Errors that reading one file or zip member can end in (zlib.error and lzma.LZMAError for a
# corrupt compressed stream, BadZipFile for a bad CRC, NotImplementedError for an unknown
# compression method, RuntimeError for an encrypted member).
_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError, RuntimeError)


def _read(src: Source, chunk_bytes: int) -> Iterator[memoryview]:
    """``src.chunks``, with a read failure as an error that names the file and the fix."""
    chunks = src.chunks(chunk_bytes)
    while True:
        try:
            data = next(chunks)
        except StopIteration:
            return
        except _READ_ERRORS as err:
            raise EtlFormatError(
                f"{src.name}: cannot be read ({err}). The file is damaged or incomplete: "
                f"download {src.path.name if src.member else src.layout.name + '.zip'} again "
                "(or unpack it and point data.root at the folder)."
            ) from err
        yield data


def iter_chunks(
    src: Source,
    codes: np.ndarray | None = None,
    out: np.ndarray | None = None,
    chunk: int = CHUNK_RECORDS,
    scratch: bool = False,
) -> Iterator[Chunk]:
    """Read, check and decode one file ``chunk`` records at a time (its dummy left out), keeping
    the records whose code is in ``codes`` (all: ``None``); without a filter the images may be
    unpacked straight into ``out`` (one row a record). With ``scratch``, every chunk's images are
    unpacked into one buffer, valid until the next chunk is read (for a caller that takes what it
    keeps from each chunk: no new memory a chunk). After the last chunk the whole file's content is
    judged (:class:`RecordCheck`): a file that is not its layout's raises there."""
    layout = src.layout
    check_size(src.size, src.name, layout)
    check, first, filled = RecordCheck(src), 0, 0
    buffer = None
    if scratch and out is None:
        buffer = np.empty((min(chunk, src.size // layout.record_size), layout.height, layout.width), np.uint8)
    for data in _read(src, chunk * layout.record_size):
        recs = np.frombuffer(data, dtype=layout.dtype)
        raw = np.frombuffer(data, dtype=np.uint8).reshape(len(recs), layout.record_size)  # every byte
        place = np.arange(first, first + len(recs))
        if layout.dummy_first and first == 0:  # "No. of records = N+1": the first is a dummy
            check_dummy(src, recs[:1])
            recs, raw, place = recs[1:], raw[1:], place[1:]
        first += len(data) // layout.record_size
        check.add(recs)
        codes_here = jis_codes(layout, recs["jis"])
        skipped = 0
        if codes is not None:
            kept = np.flatnonzero(np.isin(codes_here, codes))
            skipped = len(recs) - len(kept)
            if skipped:  # copies (data is reused); the raw bytes too: a structured copy leaves out unnamed bytes
                recs, raw, place, codes_here = recs[kept], raw[kept], place[kept], codes_here[kept]
        if buffer is not None:
            target = buffer[: len(recs)]
        else:
            target = None if out is None else out[filled : filled + len(recs)]
        images = unpack_images(recs["image"], target, layout)
        filled += len(recs)
        headers = np.concatenate([raw[:, : layout.image_offset], raw[:, layout.image_end :]], axis=1)
        pixels = pixel_keys(recs["image"])
        serial = recs["serial"] if "serial" in recs.dtype.names else place + 1
        yield Chunk(
            images,
            codes_here.astype(np.int32),
            recs["sheet"].astype(np.int64),
            serial.astype(np.int64),
            record_keys(headers, pixels),
            pixels,
            skipped,
        )
    check.finish()


def _workers(sources: list[Source]) -> int:
    """Threads for decoding files side by side: numpy, hashing and file reads release the GIL."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(len(sources), cores or 1, 8))


def read_etl(path: str | os.PathLike, codes: Collection[int] | None = None) -> EtlRecords:
    """Decode every ETL record under ``path`` (a file, a folder or a zip), in file order.

    With ``codes`` given (JIS X 0208 codes, e.g. a class set's ``jis_to_label``), only
    records of those codes are kept (and only their images are unpacked); the others are
    counted in ``skipped``. Without it nothing is filtered and every image is unpacked straight
    into its place in the one output array. Copies are dropped by :class:`Duplicates` (counted
    in ``duplicates``; ``same_pixels`` counts records kept whose pixels an earlier one has).
    Files are decoded side by side by a few threads; an error is the first file's, in file order.
    """
    sources = list_sources(path)
    layout = sources[0].layout
    sizes = [check_size(src.size, src.name, layout) - layout.dummy_first for src in sources]  # all, first
    kept_codes = None if codes is None else np.fromiter(codes, dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    shape = (layout.height, layout.width)
    out = filled_array((starts[-1], *shape)) if kept_codes is None else None

    def decode(k: int) -> list[Chunk]:
        return list(iter_chunks(sources[k], kept_codes, None if out is None else out[starts[k] : starts[k + 1]]))

    with ThreadPoolExecutor(_workers(sources), thread_name_prefix="etl-decode") as pool:
        chunks = [c for part in pool.map(decode, range(len(sources))) for c in part]
    duplicates = Duplicates()
    keep = np.concatenate([duplicates.first_copies(c.keys, c.pixels) for c in chunks] or [np.zeros(0, bool)])

    def joined(field: str, dtype) -> np.ndarray:
        parts = [getattr(c, field) for c in chunks]
        return np.concatenate(parts)[keep] if parts else np.zeros(0, dtype)

    if out is not None:
        images = out if keep.all() else out[keep]
    else:
        images = np.empty((0, *shape), np.uint8)
        if chunks:
            joined_images = filled_array((sum(len(c.images) for c in chunks), *shape))
            images = np.concatenate([c.images for c in chunks], out=joined_images)
            images = images if keep.all() else images[keep]
    return EtlRecords(
        images=images,
        jis=joined("jis", np.int32),
        sheet=joined("sheet", np.int64),
        serial=joined("serial", np.int64),
        files=tuple(src.name for src in sources),
        keys=joined("keys", "S16"),
        pixels=joined("pixels", "S16"),
        skipped=sum(c.skipped for c in chunks),
        duplicates=duplicates.dropped,
        same_pixels=duplicates.same_pixels,
        layout=layout.name,
    )


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
