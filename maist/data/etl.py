"""The only code that knows the ETL record layouts.

An ETL8G file is a plain sequence of 8,199-byte big-endian records (see
docs: etl-format). ``read_etl8g`` decodes a file, a folder of ``ETL8G_nn`` files or the
``ETL8G.zip`` that AIST ships, vectorised with numpy: one read per file, header fields
through a structured dtype, 4-bit unpacking only for the records that are kept. Records read
twice (a copied file) are kept once. ETL9G, whose records have the same size but their image
4 bytes later, is recognised by name and by content and refused until it is supported.
"""

from __future__ import annotations

import lzma
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maist.errors import UserError

RECORD_SIZE = 8199
IMAGE_HEIGHT, IMAGE_WIDTH = 127, 128
LEVELS = 16  # 4 bits per pixel: 0 = paper, 15 = darkest ink
_PACKED = IMAGE_HEIGHT * IMAGE_WIDTH // 2  # 8,128 bytes, two pixels per byte
HEADER_SIZE = 30  # bytes 1–30: the fields every "G-type" record (ETL8G, ETL9G) starts with


@dataclass(frozen=True)
class Layout:
    """Where one ETL set of 8,199-byte "G-type" records keeps its packed image.

    From AIST's format pages ("G-type Data Format", ETL8 and ETL9) and docs/etl-format.md:
    both layouts share the 30-byte header; unused bytes follow it, then the 8,128-byte image,
    then unused bytes up to 8,199.
    """

    name: str
    image_offset: int  # 0-based byte where the image starts
    file_name: re.Pattern  # the names of its record files in AIST's folder or zip

    @property
    def image_end(self) -> int:
        return self.image_offset + _PACKED


# struct '>2H8sI4B4H2B30x8128s11x': image at bytes 61–8188 (1-based), 8189–8199 unused.
ETL8G = Layout("ETL8G", 60, re.compile(r"ETL8G_\d+"))
# struct '>2H8sI4B4H2B34x8128s7x': image at bytes 65–8192, 31–64 and 8193–8199 unused.
ETL9G = Layout("ETL9G", 64, re.compile(r"ETL9G_\d+"))
UNSUPPORTED = (ETL9G,)  # layouts recognised only to refuse them with a clear message


def record_dtype(layout: Layout) -> np.dtype:
    """A layout's record as a numpy structured dtype (big-endian fields)."""
    return np.dtype(
        [
            ("sheet", ">u2"),  # serial sheet number: one sheet = one writer
            ("jis", ">u2"),  # JIS X 0208 code of the character
            ("reading", "S8"),  # JIS typical reading, e.g. b"A.HIRA  " (informative)
            ("serial", ">u4"),  # serial data number
            ("eval_image", "u1"),
            ("eval_group", "u1"),
            ("sex", "u1"),
            ("age", "u1"),
            ("industry", ">u2"),
            ("occupation", ">u2"),
            ("gathered", ">u2"),
            ("scanned", ">u2"),
            ("pos_y", "u1"),
            ("pos_x", "u1"),
            ("_unused1", f"V{layout.image_offset - HEADER_SIZE}"),
            ("image", "u1", (_PACKED,)),
            ("_unused2", f"V{RECORD_SIZE - layout.image_end}"),
        ]
    )


RECORD_DTYPE = record_dtype(ETL8G)
assert RECORD_DTYPE.itemsize == RECORD_SIZE == record_dtype(ETL9G).itemsize

# Names of the record files inside AIST's folder or zip (ETL8INFO and others are skipped).
FILE_NAME = ETL8G.file_name


class EtlFormatError(UserError):
    """A path that does not hold readable ETL8G records."""


@dataclass
class EtlRecords:
    """Decoded records, in file order."""

    images: np.ndarray  # (N, 127, 128) uint8, 0..15 exactly as stored
    jis: np.ndarray  # (N,) int JIS X 0208 codes
    sheet: np.ndarray  # (N,) int sheet numbers (writers)
    serial: np.ndarray  # (N,) int serial data numbers
    files: tuple[str, ...]  # the source of each part, in the order read
    skipped: int = 0  # records not kept because their JIS code was not asked for
    duplicates: int = 0  # kept records dropped because an earlier one had the same 8,199 bytes

    def __len__(self) -> int:
        return len(self.jis)


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One ETL8G file: on disk, or a member of a zip."""

    path: Path
    member: str | None = None
    size: int = 0  # bytes

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


_USE_ETL8G = (
    "Point data.root at ETL8G instead (ETL8G.zip from AIST, the folder it unpacks to with "
    "ETL8G_01 … ETL8G_33, or one of those files)."
)


def _refuse_by_name(path: Path, names: list[str], single: bool = False) -> None:
    """Refuse ``path`` (a ``single`` file, or a folder or zip holding files of these ``names``,
    without folders) if the names are those of an unsupported set's files."""
    for layout in UNSUPPORTED:
        if found := sorted(n for n in names if layout.file_name.fullmatch(n)):
            what = (f"an {layout.name} file" if single
                    else f"holds {layout.name} files ({found[0]} …) and no ETL8G_nn")
            raise EtlFormatError(
                f"{path}: {what}: {layout.name} is not supported yet. {_USE_ETL8G}"
            )


def list_sources(path: str | os.PathLike) -> list[Source]:
    """The ETL8G files that ``path`` names, in name order.

    ``path`` may be one record file (any name), a folder (its ``ETL8G_nn`` files, searched
    recursively) or a zip (its ``ETL8G_nn`` members). Only the directory or the zip's index is
    read here; a member that fails its CRC check is reported when it is read.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file or folder. Point data.root at your unpacked ETL8G folder, "
            "one ETL8G_nn file or ETL8G.zip (download from AIST's ETL Character Database site)."
        )
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("ETL8G_*") if p.is_file() and FILE_NAME.fullmatch(p.name)),
            key=lambda p: (p.name, str(p)),
        )
        if not files:
            _refuse_by_name(path, [p.name for p in path.rglob("*") if p.is_file()])
            raise EtlFormatError(
                f"{path}: no ETL8G_nn files in this folder. Point data.root at the folder "
                "unpacked from ETL8G.zip (it holds ETL8G_01 … ETL8G_33), or at the zip itself."
            )
        return [Source(p, size=p.stat().st_size) for p in files]
    if _is_zip(path):
        try:
            with zipfile.ZipFile(path) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise EtlFormatError(
                f"{path}: not a readable zip ({err}). The download is probably incomplete: "
                "download ETL8G.zip again, or unpack it and point data.root at the folder."
            ) from err
        names = [i.filename.rsplit("/", 1)[-1] for i in infos]
        members = [i for i, name in zip(infos, names) if FILE_NAME.fullmatch(name)]
        if not members:
            _refuse_by_name(path, names)
            raise EtlFormatError(
                f"{path}: this zip holds no ETL8G_nn files. Is it ETL8G.zip from AIST?"
            )
        members.sort(key=lambda i: (i.filename.rsplit("/", 1)[-1], i.filename))
        return [Source(path, i.filename, i.file_size) for i in members]
    _refuse_by_name(path, [path.name], single=True)
    return [Source(path, size=path.stat().st_size)]


# ---------------------------------------------------------------- decoding


def unpack_images(packed: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(N, 8128) packed bytes → (N, 127, 128) uint8 levels, high nibble first (into ``out``)."""
    n = packed.shape[0]
    if out is None:
        out = np.empty((n, IMAGE_HEIGHT, IMAGE_WIDTH), dtype=np.uint8)
    pairs = out.reshape(n, _PACKED, 2)
    np.right_shift(packed, 4, out=pairs[..., 0])
    np.bitwise_and(packed, 0x0F, out=pairs[..., 1])
    return out


def check_size(size: int, name: str) -> int:
    """The number of records in a file of ``size`` bytes, or an error saying what is wrong."""
    if size == 0:
        raise EtlFormatError(f"{name}: the file is empty. Download ETL8G again.")
    whole, extra = divmod(size, RECORD_SIZE)
    if extra:
        raise EtlFormatError(
            f"{name}: {size:,} bytes is not a whole number of {RECORD_SIZE:,}-byte ETL8G "
            f"records ({whole:,} records and {extra:,} bytes over). The file looks truncated "
            "or is not an ETL8G file: download ETL8G.zip again and re-extract it."
        )
    return whole


def records_as_bytes(recs: np.ndarray) -> np.ndarray:
    """(N,) records of RECORD_DTYPE → (N, 8199) uint8, the same memory."""
    return recs.view(np.uint8).reshape(len(recs), RECORD_SIZE)


# The bytes where ETL8G and ETL9G differ (AIST's format pages): image in one, unused in the other.
_ETL8G_ONLY = slice(ETL8G.image_offset, ETL9G.image_offset)  # 61–64: top row, first 8 pixels
_ETL9G_ONLY = slice(ETL8G.image_end, ETL9G.image_end)  # 8189–8192: bottom row, last 8 pixels
_UNUSED_IN_BOTH = slice(ETL9G.image_end, RECORD_SIZE)  # 8193–8199


def has_etl9g_layout(raw: np.ndarray) -> bool:
    """Whether records (N, 8199 bytes) keep their image 4 bytes later, as ETL9G does.

    Unused bytes are expected to be zero. So in ETL9G, bytes 61–64 are zero in every record
    while 8189–8192 (the last 8 pixels of its image) hold ink or scanner noise in some record;
    in ETL8G it is the other way round. Since a top-left corner blank in every record is common
    in ETL8G (the etl-dev ETL8B2 files: all but 12 of 3,656 records), it takes both: 61–64 zero
    throughout AND 8189–8192 non-zero somewhere. And only where 8193–8199, unused in both
    layouts, are zero throughout: a file whose unused bytes are not zero is read as ETL8G, as
    before. Images blank in both corners of every record cannot be told apart: read as ETL8G.
    """
    return bool(
        not raw[:, _UNUSED_IN_BOTH].any()
        and not raw[:, _ETL8G_ONLY].any()
        and raw[:, _ETL9G_ONLY].any()
    )


def record_keys(raw: np.ndarray, layout: Layout = ETL8G) -> np.ndarray:
    """(N, 79) bytes per record: every byte outside its image, and a 64-bit sum of its image.

    Equal records have equal keys, so only records with equal keys need a full comparison.
    Computing them costs one pass over the packed images (~7% of decoding every record).
    """
    image = raw[:, layout.image_offset : layout.image_end].view("<u8")  # 1,016 words a record
    checksum = image.sum(axis=1, dtype=np.uint64)  # wraps around: a checksum, not a count
    rest = (raw[:, : layout.image_offset], raw[:, layout.image_end :])
    return np.concatenate([*rest, checksum.view(np.uint8).reshape(-1, 8)], axis=1)


def first_occurrences(keys: np.ndarray, images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Mask of the records that do not repeat an earlier record (the first copy is kept).

    ``keys`` from ``record_keys``. A record whose key an earlier one has is compared, pixel for
    pixel, with the first record of that key (vectorised, ``chunk`` at a time); in the rare
    case that it differs, with every earlier record of that key. Equal means: the same 8,199
    bytes.
    """
    keep = np.ones(len(keys), dtype=bool)
    if len(keys) < 2:
        return keep
    whole = np.ascontiguousarray(keys).view(f"V{keys.shape[1]}").ravel()
    _, first, group = np.unique(whole, return_index=True, return_inverse=True)
    first = first[group]  # for each record, the first record with its key
    later = np.flatnonzero(first != np.arange(len(keys)))
    for part in np.array_split(later, len(later) // chunk + 1):
        keep[part] = ~(images[part] == images[first[part]]).all(axis=(1, 2))
    for i in np.flatnonzero(keep[later]):  # same key, other pixels: a checksum collision
        i = later[i]
        earlier = np.flatnonzero(keep[:i] & (group[:i] == group[i]))
        keep[i] = not any(np.array_equal(images[i], images[j]) for j in earlier)
    return keep


# Errors that reading one file or zip member can end in (zlib.error and lzma.LZMAError for a
# corrupt compressed stream, BadZipFile for a bad CRC, NotImplementedError for an unknown
# compression method, RuntimeError for an encrypted member).
_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError,
                NotImplementedError, RuntimeError)


def read_source(src: Source, buf: bytearray, n: int) -> np.ndarray:
    """The ``n`` records of ``src`` as (n,) RECORD_DTYPE in ``buf``, or an error naming it."""
    try:
        recs = np.frombuffer(src.read_into(buf), dtype=RECORD_DTYPE, count=n)
    except _READ_ERRORS as err:
        raise EtlFormatError(
            f"{src.name}: cannot be read ({err}). The file is damaged or incomplete: "
            "download ETL8G.zip again (or unpack it and point data.root at the folder)."
        ) from err
    if has_etl9g_layout(records_as_bytes(recs)):
        raise EtlFormatError(
            f"{src.name}: its records have the ETL9G layout (image at bytes 65–8192, not "
            f"61–8188 as in ETL8G): ETL9G is not supported yet. {_USE_ETL8G}"
        )
    return recs


def read_etl8g(path: str | os.PathLike, jis: Collection[int] | None = None) -> EtlRecords:
    """Decode every ETL8G record under ``path`` (a file, a folder or a zip), in file order.

    With ``jis`` given, only records of those JIS codes are kept (and only their images
    are unpacked); the others are counted in ``skipped``. Without it nothing is filtered.
    A kept record whose 8,199 bytes equal an earlier one's (a file read twice) is dropped and
    counted in ``duplicates``. Each file is read once into one reused buffer; images are
    unpacked straight into the output array.
    """
    sources = list_sources(path)
    counts = [check_size(src.size, src.name) for src in sources]
    keep = None if jis is None else np.fromiter(jis, dtype=np.int32)
    buf = bytearray(max(src.size for src in sources))
    total = sum(counts)
    # Without a filter the output size is known: one allocation, no concatenation.
    images = np.empty((total, IMAGE_HEIGHT, IMAGE_WIDTH), np.uint8) if keep is None else []
    codes, sheets, serials, keys, skipped, pos = [], [], [], [], 0, 0
    for src, n in zip(sources, counts):
        recs = read_source(src, buf, n)
        if keep is not None:
            recs = recs[np.isin(recs["jis"], keep)]  # a copy: only the kept records
            skipped += n - len(recs)
            images.append(unpack_images(recs["image"]))
        else:
            unpack_images(recs["image"], images[pos : pos + n])
            pos += n
        # Copies, since the buffer is reused for the next file.
        keys.append(record_keys(records_as_bytes(recs)))
        codes.append(recs["jis"].astype(np.int32))
        sheets.append(recs["sheet"].astype(np.int32))
        serials.append(recs["serial"].astype(np.int64))
    out = EtlRecords(
        images=images if keep is None else np.concatenate(images),
        jis=np.concatenate(codes),
        sheet=np.concatenate(sheets),
        serial=np.concatenate(serials),
        files=tuple(src.name for src in sources),
        skipped=skipped,
    )
    first = first_occurrences(np.concatenate(keys), out.images)
    if not first.all():
        out.images, out.jis = out.images[first], out.jis[first]
        out.sheet, out.serial = out.sheet[first], out.serial[first]
        out.duplicates = int(len(first) - first.sum())
    return out


# ---------------------------------------------------------------- writing


def pack_records(
    images: np.ndarray,
    jis: np.ndarray,
    sheet: np.ndarray,
    serial: np.ndarray | None = None,
    reading: list[bytes] | None = None,
) -> bytes:
    """Encode (N, 127, 128) levels 0..15 and their labels as ETL8G record bytes."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_HEIGHT, IMAGE_WIDTH):
        raise ValueError(f"images must be (N, {IMAGE_HEIGHT}, {IMAGE_WIDTH}), got {images.shape}")
    if images.size and (images.min() < 0 or images.max() >= LEVELS):
        raise ValueError("image levels must lie in 0..15")
    n = images.shape[0]
    recs = np.zeros(n, dtype=RECORD_DTYPE)
    recs["sheet"] = sheet
    recs["jis"] = jis
    recs["serial"] = np.arange(1, n + 1) if serial is None else serial
    recs["reading"] = reading if reading is not None else [b"        "] * n
    flat = images.astype(np.uint8).reshape(n, _PACKED, 2)
    recs["image"] = (flat[..., 0] << 4) | flat[..., 1]
    return recs.tobytes()


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_etl8g(path, images, jis, sheet, serial=None) -> None:
    """Write records as one ETL8G file (atomically)."""
    write_atomic(path, pack_records(images, jis, sheet, serial))
