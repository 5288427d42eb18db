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
from collections.abc import Collection, Iterator
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

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    def read_bytes(self) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(self.member)


def _is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)


def list_sources(path: str | os.PathLike) -> list[Source]:
    """The ETL8G files that ``path`` names, in name order.

    ``path`` may be one record file (any name), a folder (its ``ETL8G_nn`` files, searched
    recursively) or a zip (its ``ETL8G_nn`` members).
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
        return [Source(p) for p in files]
    if _is_zip(path):
        try:
            with zipfile.ZipFile(path) as zf:
                members = [
                    i.filename
                    for i in zf.infolist()
                    if not i.is_dir() and FILE_NAME.fullmatch(i.filename.rsplit("/", 1)[-1])
                ]
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise EtlFormatError(
                f"{path}: not a readable zip ({err}). The download is probably incomplete: "
                "download ETL8G.zip again, or unpack it and point data.root at the folder."
            ) from err
        if bad is not None:
            raise EtlFormatError(
                f"{path}: member {bad} fails its CRC check; the zip is corrupt. "
                "Download ETL8G.zip again."
            )
        if not members:
            raise EtlFormatError(
                f"{path}: this zip holds no ETL8G_nn files. Is it ETL8G.zip from AIST?"
            )
        members.sort(key=lambda m: (m.rsplit("/", 1)[-1], m))
        return [Source(path, m) for m in members]
    return [Source(path)]


# ---------------------------------------------------------------- decoding


def unpack_images(packed: np.ndarray) -> np.ndarray:
    """(N, 8128) packed bytes → (N, 127, 128) uint8 levels, high nibble first."""
    out = np.empty((packed.shape[0], _PACKED, 2), dtype=np.uint8)
    np.right_shift(packed, 4, out=out[..., 0])
    np.bitwise_and(packed, 0x0F, out=out[..., 1])
    return out.reshape(-1, IMAGE_HEIGHT, IMAGE_WIDTH)


def parse_records(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """View raw bytes as a structured array of records, or say why not."""
    if len(raw) == 0:
        raise EtlFormatError(f"{name}: the file is empty. Download ETL8G again.")
    if len(raw) % RECORD_SIZE:
        whole, extra = divmod(len(raw), RECORD_SIZE)
        raise EtlFormatError(
            f"{name}: {len(raw):,} bytes is not a whole number of {RECORD_SIZE:,}-byte ETL8G "
            f"records ({whole:,} records and {extra:,} bytes over). The file looks truncated "
            "or is not an ETL8G file: download ETL8G.zip again and re-extract it."
        )
    return np.frombuffer(raw, dtype=RECORD_DTYPE)


def _iter_parts(sources: list[Source], keep: np.ndarray | None) -> Iterator[tuple]:
    for source in sources:
        try:
            raw = source.read_bytes()
        except (OSError, zipfile.BadZipFile) as err:
            raise EtlFormatError(
                f"{source.name}: cannot be read ({err}). Check the file, or download ETL8G again."
            ) from err
        recs = parse_records(raw, source.name)
        jis = recs["jis"].astype(np.int32)
        mask = np.isin(jis, keep) if keep is not None else slice(None)
        chosen = recs[mask]
        yield source.name, chosen, len(recs) - len(chosen)


def read_etl8g(path: str | os.PathLike, jis: Collection[int] | None = None) -> EtlRecords:
    """Decode every ETL8G record under ``path`` (a file, a folder or a zip), in file order.

    With ``jis`` given, only records of those JIS codes are kept (and only their images
    are unpacked); the others are counted in ``skipped``. Without it nothing is filtered.
    """
    sources = list_sources(path)
    keep = None if jis is None else np.fromiter(jis, dtype=np.int32)
    images, codes, sheets, serials, names, skipped = [], [], [], [], [], 0
    for name, recs, n_skipped in _iter_parts(sources, keep):
        images.append(unpack_images(recs["image"]))
        codes.append(recs["jis"].astype(np.int32))
        sheets.append(recs["sheet"].astype(np.int32))
        serials.append(recs["serial"].astype(np.int64))
        names.append(name)
        skipped += n_skipped
    return EtlRecords(
        images=np.concatenate(images),
        jis=np.concatenate(codes),
        sheet=np.concatenate(sheets),
        serial=np.concatenate(serials),
        files=tuple(names),
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
