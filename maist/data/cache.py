"""On-disk cache of preprocessed arrays, keyed by the source files and every parameter.

A cache file is written to a temporary name and renamed into place, so an interrupted
run never leaves one that later loads as valid. One that cannot be read, or that the caller's
``validate`` rejects (a key missing, arrays of different lengths), is deleted, recomputed and
rewritten, with a warning naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from maist.data.etl import list_sources, write_atomic

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the preprocessing code changes what it computes
# 2: duplicate records are dropped when decoding, and their count is stored


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


def cached_arrays(
    root: str | os.PathLike,
    params: dict,
    compute: Callable[[], dict[str, np.ndarray]],
    cache_dir: str | os.PathLike | None = None,
    validate: Callable[[dict[str, np.ndarray]], str | None] | None = None,
) -> dict[str, np.ndarray]:
    """Load the arrays for (root, params) from the cache, or compute and store them.

    ``validate(arrays)`` says what is wrong with loaded arrays (None: nothing); a cache file
    that cannot be read or that it rejects is deleted, recomputed and rewritten.
    ``cache_dir=False`` turns the cache off.
    """
    if cache_dir is False:
        return compute()
    folder = default_cache_dir() if cache_dir in (None, True, "") else Path(cache_dir).expanduser()
    path = folder / f"{cache_key(root, params)}.npz"
    if path.exists():
        try:
            with np.load(path) as npz:
                arrays = {k: npz[k] for k in npz.files}
            problem = validate(arrays) if validate else None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            problem = f"unreadable: {err}"
        if problem is None:
            log.info("loaded preprocessed data from cache %s", path)
            return arrays
        log.warning("deleting bad cache file %s (%s); recomputing it", path, problem)
        path.unlink(missing_ok=True)
    arrays = compute()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        write_atomic(path, buf.getvalue())
        log.info("cached preprocessed data in %s", path)
    except OSError as err:
        log.warning("could not write cache %s (%s); continuing without it", path, err)
    return arrays
