"""The only code that knows the ETL8G record layout.

An ETL8G file is a plain sequence of 8,199-byte big-endian records (see
docs: etl-format). ``read_etl8g`` decodes a file, a folder of ``ETL8G_nn`` files or the
``ETL8G.zip`` that AIST ships, vectorised with numpy: one read per file, header fields
through a structured dtype, 4-bit unpacking only for the records that are kept.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RECORD_SIZE = 8199
IMAGE_HEIGHT, IMAGE_WIDTH = 127, 128
LEVELS = 16  # 4 bits per pixel: 0 = paper, 15 = darkest ink
_PACKED = IMAGE_HEIGHT * IMAGE_WIDTH // 2  # 8,128 bytes, two pixels per byte

# struct format '>2H8sI4B4H2B30x8128s11x' as a numpy structured dtype.
RECORD_DTYPE = np.dtype(
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
        ("_unused1", "V30"),
        ("image", "u1", (_PACKED,)),
        ("_unused2", "V11"),
    ]
)
assert RECORD_DTYPE.itemsize == RECORD_SIZE

# Names of the record files inside AIST's folder or zip (ETL8INFO and others are skipped).
FILE_NAME = re.compile(r"ETL8G_\d+")


class EtlFormatError(ValueError):
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
            raise EtlFormatError(
                f"{path}: no ETL8G_nn files in this folder. Point data.root at the folder "
                "unpacked from ETL8G.zip (it holds ETL8G_01 … ETL8G_33), or at the zip itself."
            )
        return [Source(p, size=p.stat().st_size) for p in files]
    if _is_zip(path):
        try:
            with zipfile.ZipFile(path) as zf:
                members = [
                    i for i in zf.infolist()
                    if not i.is_dir() and FILE_NAME.fullmatch(i.filename.rsplit("/", 1)[-1])
                ]
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise EtlFormatError(
                f"{path}: not a readable zip ({err}). The download is probably incomplete: "
                "download ETL8G.zip again, or unpack it and point data.root at the folder."
            ) from err
        if not members:
            raise EtlFormatError(
                f"{path}: this zip holds no ETL8G_nn files. Is it ETL8G.zip from AIST?"
            )
        members.sort(key=lambda i: (i.filename.rsplit("/", 1)[-1], i.filename))
        return [Source(path, i.filename, i.file_size) for i in members]
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


def read_etl8g(path: str | os.PathLike, jis: Collection[int] | None = None) -> EtlRecords:
    """Decode every ETL8G record under ``path`` (a file, a folder or a zip), in file order.

    With ``jis`` given, only records of those JIS codes are kept (and only their images
    are unpacked); the others are counted in ``skipped``. Without it nothing is filtered.
    Each file is read once into one reused buffer; images are unpacked straight into the
    output array.
    """
    sources = list_sources(path)
    counts = [check_size(src.size, src.name) for src in sources]
    keep = None if jis is None else np.fromiter(jis, dtype=np.int32)
    buf = bytearray(max(src.size for src in sources))
    total = sum(counts)
    # Without a filter the output size is known: one allocation, no concatenation.
    images = np.empty((total, IMAGE_HEIGHT, IMAGE_WIDTH), np.uint8) if keep is None else []
    codes, sheets, serials, skipped, pos = [], [], [], 0, 0
    for src, n in zip(sources, counts):
        try:
            recs = np.frombuffer(src.read_into(buf), dtype=RECORD_DTYPE, count=n)
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            raise EtlFormatError(
                f"{src.name}: cannot be read ({err}). The file is damaged or incomplete: "
                "download ETL8G.zip again."
            ) from err
        if keep is not None:
            recs = recs[np.isin(recs["jis"], keep)]  # a copy: only the kept records
            skipped += n - len(recs)
            images.append(unpack_images(recs["image"]))
        else:
            unpack_images(recs["image"], images[pos : pos + n])
            pos += n
        # Copies, since the buffer is reused for the next file.
        codes.append(recs["jis"].astype(np.int32))
        sheets.append(recs["sheet"].astype(np.int32))
        serials.append(recs["serial"].astype(np.int64))
    return EtlRecords(
        images=images if keep is None else np.concatenate(images),
        jis=np.concatenate(codes),
        sheet=np.concatenate(sheets),
        serial=np.concatenate(serials),
        files=tuple(src.name for src in sources),
        skipped=skipped,
    )


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
