"""Memory and speed of the cached uint8 store on a full-scale ETL9G- or ETL8G-shaped folder
generated on the fly (not ETL data): by default every record of etl9g_all (3,036 classes) at 64×64.

    python -m benchmarks.bench_memory [--shape ETL9G|ETL8G] [--class-set NAME] [--files N]
                                      [--baseline-files 1] [--image-size 64]
                                      [--preprocess config|plain] [--tmp DIR] [--keep]

``--shape ETL9G`` (the default) mimics ETL9G: ``ETL9G_01`` … ``ETL9G_50`` of 12,144 records each
(4 writers × 3,036 characters), 607,200 records and 5.0 GB in all. ``--shape ETL8G``: ``ETL8G_01``
… ``ETL8G_33`` of 4,780 records (5 writers × 956 characters), 157,740 records and 1.3 GB; its
class set is ``etl8g_all`` unless ``--class-set hiragana71`` (the 71 hiragana: the other records
are read and skipped). ``--files 4`` for a quick run. Images are random-ish (faint noise plus ink
rectangles); every file holds the same images with its own sheet and serial numbers (so no record
is a copy of another).

Measured, each in a fresh child process (its peak memory is its own ``ru_maxrss``):

- cold: ``EtlDataset(folder, class_set, preprocess=Preprocess(64, …))``: decode file by file, preprocess,
  write the uint8 cache entry (the target: peak memory under 3 GB for the whole set);
- warm: the same call again (a cache hit: the target, under a second), then
  ``MaistDataModule.setup`` (load, writer split, ink ratio), then one pass reading every image:
  what that pass adds is mapped file pages (``RssFile``: the page cache, which every process that
  maps the entry shares), not memory of the process's own (``RssAnon``).

Against the per-record loader of published code, timed in this process on ``--baseline-files``
files and scaled linearly: ``struct.unpack`` of each 8,199-byte record, ``PIL.Image.frombytes``
(4-bit), a PIL resize to the target size and a float32 array per record. The ratio printed is
the cold build's records per second over the loader's (the build also removes the background,
thresholds, despeckles and crops: ``--preprocess config`` is ``conf/data/etl.yaml``'s, ``plain``
only stretches the contrast and resizes); the build's decoding alone (read, check, unpack, look
for copies, file by file) is timed on the same files too. The temporary folder is deleted at the
end.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, generate_folder, per_record_images

# layout name → (files of the full set, writers a file, its every-character class set)
SHAPES = {"ETL9G": (50, 4, "etl9g_all"), "ETL8G": (33, 5, "etl8g_all")}
MEMORY_TARGET = 3e9  # bytes: peak of the cold build, the whole set at 64×64
WARM_TARGET = 1.0  # seconds: a warm load


def layout_of(shape: str):
    from maist.data import etl

    return getattr(etl, shape)


def generate(folder: Path, n_files: int, shape: str = "ETL9G", seed: int = 0) -> int:
    """Write <shape>_01 … <shape>_nn into ``folder`` (every character of the shape's set, its
    writers a file); return the number of records."""
    from maist.data.kana import class_set

    _, writers, every = SHAPES[shape]
    codes = list(class_set(every).jis_to_label)
    return generate_folder(folder, layout_of(shape), codes, n_files, writers, seed)


def per_record_load(paths: list[Path], size: int, shape: str = "ETL9G") -> np.ndarray:
    """struct + PIL per record (benchmarks.common.per_record_images), resized to ``size`` and made
    float32, as published loaders do."""
    from PIL import Image

    return np.stack(
        [
            np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32) / 15
            for img in per_record_images(paths, layout_of(shape))
        ]
    )


def decode_only(paths: list[Path], class_set_name: str = "etl9g_all") -> int:
    """What the build does before preprocessing: read, check and unpack file by file (the class
    set's characters kept, copies looked for); returns the records decoded."""
    from maist.data.etl import Duplicates, iter_chunks, list_sources
    from maist.data.kana import class_set

    codes = np.fromiter(class_set(class_set_name).jis_to_label, dtype=np.int32)
    n, copies = 0, Duplicates()
    for path in paths:
        (src,) = list_sources(path)
        for chunk in iter_chunks(src, codes):
            copies.first_copies(chunk.keys, chunk.pixels)
            n += len(chunk.keys) + chunk.skipped
    return n


def preprocess_of(name: str, size: int):
    """``config``: the project's preprocessing (``Preprocess()``, what train.py builds); ``plain``:
    contrast stretch and resize only."""
    from maist.data.preprocess import Preprocess

    if name == "plain":
        return Preprocess(image_size=size, threshold=0.0, despeckle=0, crop=False)
    return Preprocess(image_size=size)


# ---------------------------------------------------------------- the child processes


def _memory() -> dict:
    """Peak RSS, and the current RSS split into private (anon) and file-backed pages."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kb = lambda key: int(status.get(key, "0 kB").split()[0]) * 1024  # noqa: E731
    return {
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_anon": kb("RssAnon"),
        "rss_file": kb("RssFile"),
    }


def child(args) -> dict:
    from maist.data.dataset import EtlDataset

    pre = preprocess_of(args.preprocess, args.image_size)
    started = time.perf_counter()
    ds = EtlDataset(args.folder, args.class_set, preprocess=pre, cache_dir=args.cache)
    out = {"seconds": time.perf_counter() - started, "records": len(ds), **_memory()}
    if args.child == "warm":
        from maist.data.datamodule import MaistDataModule

        started = time.perf_counter()
        dm = MaistDataModule(
            root=args.folder,
            class_set=args.class_set,
            image_size=args.image_size,
            preprocess={k: v for k, v in pre.as_dict().items() if k != "image_size"},
            cache_dir=args.cache,
        )
        dm.setup("fit")
        out["setup_seconds"] = time.perf_counter() - started
        before, started = _memory(), time.perf_counter()
        total = sum(int(ds.images[i : i + 65_536].sum()) for i in range(0, len(ds), 65_536))
        out.update(
            read_seconds=time.perf_counter() - started, pixel_sum=total, before_read=before, after_read=_memory()
        )
    return out


def run_child(kind: str, folder: Path, cache: Path, args) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_memory",
        "--child",
        kind,
        "--folder",
        str(folder),
        "--cache",
        str(cache),
        "--image-size",
        str(args.image_size),
        "--preprocess",
        args.preprocess,
        "--class-set",
        args.class_set,
    ]
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)  # stderr: progress
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- main


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=tuple(SHAPES), default="ETL9G", help="the layout generated (default ETL9G)")
    p.add_argument("--class-set", default=None, help="the class set built (default: every character of the shape)")
    p.add_argument("--files", type=int, default=None, help="files generated (default: the full set's)")
    p.add_argument("--baseline-files", type=int, default=1, help="files the per-record loader is timed on")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--preprocess", choices=("config", "plain"), default="config")
    p.add_argument("--tmp", default=None, help="parent of the temporary folder (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the generated folder and cache")
    p.add_argument("--child", choices=("cold", "warm"), help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    full_files, _, every = SHAPES[args.shape]
    args.class_set = args.class_set or every
    args.files = max(1, args.files or full_files)
    if args.child:
        print(json.dumps(child(args)))
        return

    work = Path(tempfile.mkdtemp(prefix="maist-bench-memory-", dir=args.tmp))
    try:
        folder, cache = work / args.shape, work / "cache"
        started = time.perf_counter()
        total = generate(folder, args.files, args.shape)
        size = sum(f.stat().st_size for f in folder.iterdir())
        print(
            f"generated {args.files} {args.shape} files, {total:,} records, {gb(size)} in "
            f"{time.perf_counter() - started:.1f} s ({folder})",
            flush=True,
        )

        files = sorted(folder.iterdir())[: max(1, args.baseline_files)]
        started = time.perf_counter()
        n_base = len(per_record_load(files, args.image_size, args.shape))
        base_rate = n_base / (time.perf_counter() - started)

        decode_only([], args.class_set)  # its imports (torch among them) are not decoding
        started = time.perf_counter()
        n_decoded = decode_only(files, args.class_set)
        decode_rate = n_decoded / (time.perf_counter() - started)

        cold = run_child("cold", folder, cache, args)
        warm = run_child("warm", folder, cache, args)
        assert cold["records"] == warm["records"]
        kept = cold["records"]
        entry = next(p for p in cache.iterdir() if p.is_dir())
        on_disk = sum(f.stat().st_size for f in entry.iterdir())
        side = args.image_size
        cold_rate = total / cold["seconds"]
        before, after = warm["before_read"], warm["after_read"]

        print(
            f"\n{total:,} records read, {kept:,} of class set {args.class_set} kept, at {side}×{side}, "
            f"preprocess={args.preprocess} (records/s count records read):"
        )
        print(
            f"  cache entry on disk        {gb(on_disk)} (uint8; as float32 in memory it would be "
            f"{gb(kept * side * side * 4)})"
        )
        print(
            f"  cold build                 {cold['seconds']:.1f} s, {cold_rate:,.0f} records/s, peak memory "
            f"{gb(cold['maxrss'])} (target < {gb(MEMORY_TARGET)}: "
            f"{'met' if cold['maxrss'] < MEMORY_TARGET else 'NOT met'})"
        )
        print(
            f"  per-record struct + PIL    {base_rate:,.0f} records/s (timed on {n_base:,} records, "
            f"{len(files)} file{'s' if len(files) > 1 else ''})"
        )
        print(f"  throughput ratio           {cold_rate / base_rate:.2f}× (cold build / per-record loader)")
        print(
            f"  of which decoding          {decode_rate:,.0f} records/s, {decode_rate / base_rate:.1f}× the "
            f"per-record loader (same files): the rest of the build is preprocessing"
        )
        print(
            f"  warm load                  {warm['seconds']:.3f} s (target < {WARM_TARGET:g} s: "
            f"{'met' if warm['seconds'] < WARM_TARGET else 'NOT met'}), peak memory {gb(warm['maxrss'])}"
        )
        print(f"  datamodule setup (warm)    {warm['setup_seconds']:.2f} s (load, writer split, ink ratio)")
        print(
            f"  reading every image once   {warm['read_seconds']:.1f} s: its own memory (RssAnon) "
            f"{gb(before['rss_anon'])} → {gb(after['rss_anon'])}; mapped file pages (RssFile) "
            f"{gb(before['rss_file'])} → {gb(after['rss_file'])}: page cache, shared by every process "
            "that maps the entry"
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
