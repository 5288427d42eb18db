"""On-disk cache of preprocessed arrays, keyed by the source files and every parameter.

An entry is a folder ``<cache_dir>/<key>/``:

- ``*.npy``: the big arrays (the images, uint8), loaded memory-mapped
  (``np.load(mmap_mode="c")``): a warm load reads their headers only, and every process that
  loads the entry (the ranks of a DDP run) shares the same pages of the page cache;
- ``arrays.npz``: the small arrays (labels, writers, counts), read whole, CRC-checked.

The caller's ``build(folder)`` writes an entry into a temporary folder beside it
(:class:`RowWriter` for a big array filled in order, :func:`save_small` for the rest), which is
renamed into place when complete: an entry is there whole or not at all, whatever interrupts
the build (a build killed outright leaves its temporary folder, which the next build of the
entry deletes). A lock file ``<key>.lock`` beside the entry (``filelock``) makes processes that
miss at the same time (DDP ranks started together by SLURM) build it once: the first builds,
the others wait for it and then load its entry.

An entry that cannot be read (a file missing, empty, truncated, not a ``.npy``, a bad CRC) or
that the caller's ``validate`` rejects (a key missing, arrays of different lengths) is deleted
with a warning naming it and rebuilt. The pixels of a big array are not re-read on load (that
would cost the full pass the memory map saves); its header and file size are checked.
A cache folder that cannot be written (a full disk, no permission) costs a warning: the arrays
are then built in a temporary folder that is deleted once they are loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from maist.data.etl import list_sources

log = logging.getLogger(__name__)

CACHE_VERSION = 5  # bump when the preprocessing code changes what it computes
# 2: duplicate records are dropped when decoding, and their count is stored
# 3: an entry is a folder: images as uint8 round(255 x) in a memory-mapped .npy, the rest in an npz
# 4: each record's identity and pixel digests are stored (copies across roots), and same_pixels
# 5: preprocessed in blocks (Preprocess.stored): a stored pixel may differ by 1 from version 4's

SMALL_FILE = "arrays.npz"  # the small arrays of an entry
NPY_HEADER_BYTES = 128  # the .npy header RowWriter writes (version 1.0, padded: room for any shape)
# What loading an entry can fail with: a missing or short file, a bad header, a bad CRC.
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


class CacheWriteError(OSError):
    """Writing a cache entry failed (a full disk, no permission): the build goes on uncached."""


def default_cache_dir() -> Path:
    """``$MAIST_CACHE_DIR``, else ``$XDG_CACHE_HOME/maist``, else ``~/.cache/maist``."""
    if env := os.environ.get("MAIST_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "maist"


def source_fingerprint(root: str | os.PathLike) -> list[list]:
    """(name, size, mtime) of every file that ``root`` reads from."""
    files = {src.path for src in list_sources(root)}  # a zip counts once, as the whole file
    out = []
    for path in sorted(files):
        st = path.stat()
        out.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    return out


def cache_key(root: str | os.PathLike, params: dict) -> str:
    payload = {"version": CACHE_VERSION, "sources": source_fingerprint(root), "params": params}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def check_arrays(
    arrays: dict[str, np.ndarray], per_record: dict[str, int], scalars: tuple[str, ...] = ()
) -> str | None:
    """What is wrong with ``arrays``, or None: a building block for ``validate``.

    ``per_record`` maps each key that holds one entry per record to its number of dimensions
    (all must have the same length); ``scalars`` are keys of 0-d arrays.
    """
    missing = [k for k in (*per_record, *scalars) if k not in arrays]
    if missing:
        return f"missing {', '.join(missing)}"
    for key, ndim in per_record.items():
        if arrays[key].ndim != ndim:
            return f"{key} has {arrays[key].ndim} dimensions, not {ndim}"
    for key in scalars:
        if arrays[key].ndim != 0:
            return f"{key} is not a single number"
    lengths = {key: len(arrays[key]) for key in per_record}
    if len(set(lengths.values())) > 1:
        return "arrays of different lengths: " + ", ".join(f"{k} {n:,}" for k, n in lengths.items())
    return None


# ---------------------------------------------------------------- writing an entry


def npy_header(dtype: np.dtype, shape: tuple[int, ...], size: int = NPY_HEADER_BYTES) -> bytes:
    """A .npy (version 1.0) header of exactly ``size`` bytes for a C-order array."""
    text = (
        f"{{'descr': {np.lib.format.dtype_to_descr(np.dtype(dtype))!r}, "
        f"'fortran_order': False, 'shape': {tuple(int(s) for s in shape)!r}, }}"
    )
    magic = np.lib.format.magic(1, 0)
    room = size - len(magic) - 2  # the text and its newline, after a 2-byte length
    if len(text) + 1 > room:
        raise ValueError(f"a .npy header for shape {shape} does not fit in {size} bytes")
    return magic + struct.pack("<H", room) + (text.ljust(room - 1) + "\n").encode("latin1")


class RowWriter:
    """A ``.npy`` array of rows, filled in order: ``(n, *row_shape)`` of ``dtype``, where ``n``
    is known only at the end but is at most ``capacity``.

    The file is created at its full size for ``capacity`` rows (sparse: nothing is written
    yet); rows are appended with plain writes, not through a memory map, so they do not count
    in this process's memory; :meth:`close` writes the header of the rows written and cuts the
    file there. Any failure to write raises :class:`CacheWriteError`.
    """

    def __init__(self, path: str | os.PathLike, capacity: int, row_shape: tuple[int, ...], dtype=np.uint8):
        self.path, self.capacity = Path(path), int(capacity)
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.count = 0
        self._file = None
        with self._writing():
            self._file = open(self.path, "wb")
            self._file.write(npy_header(self.dtype, (self.capacity, *self.row_shape)))
            self._file.truncate(NPY_HEADER_BYTES + self.capacity * self.row_bytes)

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except OSError as err:
            raise CacheWriteError(err.errno, f"cannot write {self.path}: {err}") from err

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if not len(rows):
            return
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        if self.count + len(rows) > self.capacity:
            raise ValueError(f"more than the {self.capacity:,} rows {self.path} was made for")
        with self._writing():
            self._file.write(memoryview(rows).cast("B"))
        self.count += len(rows)

    def close(self) -> int:
        """Write the header of the rows written, cut the file after them; return their number."""
        if self._file is not None and not self._file.closed:
            with self._writing():
                self._file.seek(0)
                self._file.write(npy_header(self.dtype, (self.count, *self.row_shape)))
                self._file.truncate(NPY_HEADER_BYTES + self.count * self.row_bytes)
                self._file.close()
        return self.count

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        elif self._file is not None:
            self._file.close()  # the caller's temporary folder goes, with this file


def save_small(folder: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write an entry's small arrays (``arrays.npz``); :class:`CacheWriteError` on failure."""
    path = Path(folder) / SMALL_FILE
    try:
        np.savez(path, **arrays)
    except OSError as err:
        raise CacheWriteError(err.errno, f"cannot write {path}: {err}") from err


# ---------------------------------------------------------------- reading an entry


def load_entry(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """An entry's arrays: the small ones read whole, each ``.npy`` memory-mapped copy-on-write
    (writable in this process, never written back)."""
    folder = Path(folder)
    with np.load(folder / SMALL_FILE) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for path in sorted(folder.glob("*.npy")):
        arrays[path.stem] = np.load(path, mmap_mode="c")
    return arrays


def _load_valid(entry: Path, validate) -> dict[str, np.ndarray] | None:
    """The entry's arrays; None if there is none, or if it is bad (then it is deleted)."""
    if not entry.exists():
        return None
    try:
        arrays = load_entry(entry)
        problem = validate(arrays) if validate else None
    except _READ_ERRORS as err:
        problem = f"unreadable: {err}"
    if problem is None:
        return arrays
    log.warning("deleting bad cache entry %s (%s); rebuilding it", entry, problem)
    _remove(entry)
    return None


def _remove(entry: Path) -> None:
    """Delete an entry: renamed away first, so no process sees it half-deleted."""
    gone = entry.with_name(f".{entry.name}.{os.getpid()}.deleted")
    try:
        os.rename(entry, gone)
    except FileNotFoundError:
        return
    shutil.rmtree(gone, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path):
    """Hold the exclusive lock of the file ``path`` (``filelock``: an OS lock, released when the
    process dies; the file is left in place)."""
    lock = FileLock(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("another process is building %s: waiting for it", path.with_suffix(""))
            lock.acquire()
    except OSError as err:
        raise CacheWriteError(err.errno, f"cannot create the lock file {path}: {err}") from err
    try:
        yield
    finally:
        lock.release()


def _build_entry(entry: Path, build: Callable[[Path], None]) -> None:
    """``build`` into a temporary folder beside ``entry``, then rename it into place. Called
    with the entry's lock held: temporary folders of the entry found then are left by a build
    that was killed (only the lock's holder builds), and are deleted."""
    for stale in entry.parent.glob(f".{entry.name}.*.tmp"):
        log.info("deleting %s, left by an interrupted build", stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp"))
    except OSError as err:
        raise CacheWriteError(err.errno, f"cannot create a folder in {entry.parent}: {err}") from err
    try:
        build(tmp)
        os.rename(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build_uncached(build: Callable[[Path], None]) -> dict[str, np.ndarray]:
    """Build in a temporary folder and load from it; the folder is deleted at once (the memory
    maps keep the files' data until they are released)."""
    tmp = Path(tempfile.mkdtemp(prefix="maist-uncached-"))
    try:
        build(tmp)
        return load_entry(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_arrays(
    root: str | os.PathLike,
    params: dict,
    build: Callable[[Path], None],
    cache_dir: str | os.PathLike | bool | None = None,
    validate: Callable[[dict[str, np.ndarray]], str | None] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays for (root, params): loaded from their cache entry, or built into it first.

    ``build(folder)`` writes the arrays into ``folder`` (see the module doc); ``validate(arrays)``
    says what is wrong with loaded arrays (None: nothing). ``cache_dir=False`` turns the cache
    off (the arrays are built in a temporary folder every time).
    """
    if cache_dir is False:
        return _build_uncached(build)
    folder = default_cache_dir() if cache_dir in (None, True, "") else Path(cache_dir).expanduser()
    entry = folder / cache_key(root, params)
    if (arrays := _load_valid(entry, validate)) is not None:
        log.info("loaded preprocessed data from cache %s", entry)
        return arrays
    try:
        with _locked(entry.with_name(entry.name + ".lock")):
            if (arrays := _load_valid(entry, validate)) is not None:  # built while this one waited
                log.info("loaded preprocessed data from cache %s (built by another process)", entry)
                return arrays
            _build_entry(entry, build)
    except CacheWriteError as err:
        log.warning("could not write cache %s (%s); continuing without it", entry, err)
        return _build_uncached(build)
    log.info("cached preprocessed data in %s", entry)
    return load_entry(entry)
