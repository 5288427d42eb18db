"""On-disk cache of preprocessed arrays, keyed by the source files and every parameter.

A cache file is written to a temporary name and renamed into place, so an interrupted
run never leaves one that later loads as valid.
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

CACHE_VERSION = 1  # bump when the preprocessing code changes what it computes


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


def cached_arrays(
    root: str | os.PathLike,
    params: dict,
    compute: Callable[[], dict[str, np.ndarray]],
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Load the arrays for (root, params) from the cache, or compute and store them.

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
            log.info("loaded preprocessed data from cache %s", path)
            return arrays
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            log.warning("ignoring unreadable cache file %s (%s); recomputing", path, err)
    arrays = compute()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        write_atomic(path, buf.getvalue())
        log.info("cached preprocessed data in %s", path)
    except OSError as err:
        log.warning("could not write cache %s (%s); continuing without it", path, err)
    return arrays
