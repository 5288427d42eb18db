"""ETL characters (any supported layout, any class set) as a dataset, in torchvision's manner.

Storage: the records under a root are decoded file by file, preprocessed, and written as uint8
``round(255 x)`` of the preprocessed values ``x`` in [0, 1] into one on-disk array that is the
cache entry (:mod:`maist.data.cache`), loaded memory-mapped. So a set never needs more memory
than one file's records and one chunk of floats (ETL9G at 64×64: 2.5 GB on disk, not 10 GB of
float32 in every process), a warm load maps the file instead of reading it, and processes that
load the same entry share its pages. Floats are made per batch: :func:`to_float`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import VisionDataset
from tqdm.auto import tqdm

from maist.data.cache import RowWriter, cached_arrays, check_arrays, save_small
from maist.data.etl import EtlFormatError, Source, check_size, jis_codes, list_sources, read_source, unpack_images
from maist.data.kana import class_set as get_class_set
from maist.data.preprocess import Preprocess, etl_levels_to_float

log = logging.getLogger(__name__)

PIXEL_MAX = 255  # stored pixel = round(PIXEL_MAX × preprocessed value in [0, 1])
CHUNK = 256  # records preprocessed at a time (their float copies: 17 MB at 127 × 128)


def sample_root() -> Path:
    """The generated, non-ETL sample that ships with the package."""
    from maist.data.sample import SAMPLE_ZIP

    return SAMPLE_ZIP


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Preprocessed floats in [0, 1] → the stored uint8 ``round(255 x)``."""
    return x.mul(PIXEL_MAX).round_().clamp_(0, PIXEL_MAX).to(torch.uint8).numpy()


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Stored uint8 images → float32 in [0, 1] (on ``x``'s device): what the networks take."""
    return x.to(torch.float32).div_(PIXEL_MAX)


# What load_arrays returns (and caches): one entry per record, with its dimensions ...
PER_RECORD = {"images": 3, "labels": 1, "writers": 1, "jis": 1}
# ... and counts for the whole root.
COUNTS = ("skipped", "duplicates")


def check_loaded(arrays: dict[str, np.ndarray], image_size: int | None = None) -> str | None:
    """What is wrong with arrays read back from the cache, or None."""
    if problem := check_arrays(arrays, PER_RECORD, COUNTS):
        return problem
    images = arrays["images"]
    if images.dtype != np.uint8:
        return f"images are {images.dtype}, not uint8"
    if image_size is not None and images.shape[1:] != (image_size, image_size):
        return f"images are {images.shape[1]}×{images.shape[2]}, not {image_size}×{image_size}"
    for key in ("labels", "writers", "jis", *COUNTS):
        if arrays[key].dtype.kind not in "iu":
            return f"{key} are {arrays[key].dtype}, not integers"
    return None


# ---------------------------------------------------------------- decoding, file by file


@dataclass
class SourceRecords:
    """The records of one file that belong to the class set, as stored (native size)."""

    images: np.ndarray  # (n, H, W) uint8 levels 0..max_level
    jis: np.ndarray  # (n,) int32 JIS X 0208 codes
    sheet: np.ndarray  # (n,) writers
    keys: np.ndarray  # (n, k) uint8: what tells a copy of a record (see record_keys)
    skipped: int  # records of other characters


def record_keys(headers: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(n, k) bytes per record: ``headers`` (every byte outside its image) and two 64-bit
    wrap-around sums of its pixels' 8-byte words (plain and weighted by position). Records with
    equal keys are copies of each other: real ETL records differ in their headers (serial
    numbers), so equal headers with equal pixel sums means a file read twice."""
    n = len(images)
    words = np.ascontiguousarray(images).reshape(n, int(np.prod(images.shape[1:]))).view("<u8")
    weights = np.arange(1, words.shape[1] + 1, dtype=np.uint64)
    sums = np.empty((n, 2), np.uint64)
    for i in range(0, n, CHUNK):  # the weighted product is a temporary as big as the block
        block = words[i : i + CHUNK]
        sums[i : i + CHUNK, 0] = block.sum(axis=1, dtype=np.uint64)
        sums[i : i + CHUNK, 1] = (block * weights).sum(axis=1, dtype=np.uint64)
    return np.concatenate([headers, sums.view(np.uint8).reshape(n, 16)], axis=1)


def decode_source(src: Source, n: int, codes: np.ndarray, buf: bytearray) -> SourceRecords:
    """Read and check one file (``n`` records, its dummy included), keep the records whose code
    is in ``codes`` and unpack their images; ``buf`` is the read buffer, reused across files
    (nothing returned points into it)."""
    layout = src.layout
    recs = read_source(src, buf, n)
    codes_here = jis_codes(layout, recs["jis"])
    kept = np.flatnonzero(np.isin(codes_here, codes))
    raw = recs.view(np.uint8).reshape(len(recs), layout.record_size)
    headers = np.concatenate([raw[kept, : layout.image_offset], raw[kept, layout.image_end :]], axis=1)
    packed = recs["image"] if len(kept) == len(recs) else recs["image"][kept]  # copy only a selection
    images = unpack_images(packed, layout=layout)
    return SourceRecords(
        images,
        codes_here[kept].astype(np.int32),
        recs["sheet"][kept].astype(np.int64),
        record_keys(headers, images),
        len(recs) - len(kept),
    )


def first_copies(keys: np.ndarray, seen: set[bytes]) -> np.ndarray:
    """Mask of the records whose key is not in ``seen`` nor earlier in ``keys``; adds theirs."""
    keep = np.ones(len(keys), dtype=bool)
    for i, key in enumerate(map(bytes, keys)):
        if key in seen:
            keep[i] = False
        else:
            seen.add(key)
    return keep


def build_arrays(root, class_set: str, preprocess: Preprocess, folder: Path) -> None:
    """Decode, select and preprocess the records under ``root`` file by file, into ``folder``:
    ``images.npy`` (N, S, S) uint8 (written row by row, never held whole) and ``arrays.npz``
    (labels, writers, jis, skipped, duplicates). Records are kept in file order; a copy of an
    earlier record (a file read twice) is dropped and counted."""
    cs = get_class_set(class_set)
    sources = list_sources(root)
    layout = sources[0].layout
    counts = [check_size(src.size, src.name, layout) for src in sources]  # every file, before any decoding
    capacity = sum(counts) - (len(sources) if layout.dummy_first else 0)
    codes = np.fromiter(cs.jis_to_label, dtype=np.int32)
    lookup = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
    lookup[codes] = list(cs.jis_to_label.values())
    jis, writers, seen, buf = [], [], set(), bytearray()
    skipped = duplicates = 0
    side = preprocess.image_size
    started = time.perf_counter()
    log.info(
        "decoding and preprocessing %s (%s records in %d files; once: the result is cached)",
        root,
        f"{capacity:,}",
        len(sources),
    )
    with (
        RowWriter(folder / "images.npy", capacity, (side, side)) as out,
        tqdm(total=capacity, unit="rec", unit_scale=True, desc="decoding", disable=None) as bar,
    ):
        for src, n in zip(sources, counts):
            if len(buf) < src.size:
                buf = bytearray(src.size)
            part = decode_source(src, n, codes, buf)
            keep = first_copies(part.keys, seen)
            duplicates += int((~keep).sum())
            skipped += part.skipped
            bar.update(part.skipped + int((~keep).sum()))
            images = part.images if keep.all() else part.images[keep]
            for i in range(0, len(images), CHUNK):
                block = etl_levels_to_float(images[i : i + CHUNK], layout.max_level)
                out.append(to_uint8(preprocess(block)))
                bar.update(len(block))
            jis.append(part.jis[keep])
            writers.append(part.sheet[keep])
    if out.count == 0:
        raise EtlFormatError(
            f"{root}: none of its {skipped:,} {layout.name} records belongs to class set "
            f"{class_set!r} ({cs.num_classes} characters, e.g. {''.join(cs.classes[:5])}). "
            "Choose a data.class_set that this set holds, or point data.root at another set."
        )
    jis = np.concatenate(jis)
    save_small(
        folder,
        labels=lookup[jis],
        writers=np.concatenate(writers),
        jis=jis,
        skipped=np.array(skipped),
        duplicates=np.array(duplicates),
    )
    seconds = time.perf_counter() - started
    log.info(
        "%s: %s records kept (%s skipped: other characters) in %.1f s (%s records/s)",
        root,
        f"{out.count:,}",
        f"{skipped:,}",
        seconds,
        f"{capacity / max(seconds, 1e-9):,.0f}",
    )


def load_arrays(root, class_set: str, preprocess: Preprocess, cache_dir=None) -> dict[str, np.ndarray]:
    """The records under ``root`` of ``class_set``, preprocessed (cached on disk): ``images``
    (N, S, S) uint8 memory-mapped, ``labels``, ``writers``, ``jis``, ``skipped``, ``duplicates``."""
    cs = get_class_set(class_set)
    params = {"class_set": class_set, "preprocess": preprocess.as_dict()}
    build = partial(build_arrays, root, class_set, preprocess)
    validate = partial(check_loaded, image_size=preprocess.image_size)
    arrays = cached_arrays(root, params, build, cache_dir, validate=validate)
    present = np.zeros(cs.num_classes, dtype=bool)
    present[arrays["labels"]] = True
    if missing := int((~present).sum()):  # info, not a warning: partial sets are common
        absent = "".join(c for c, here in zip(cs.classes, present) if not here)
        log.info(
            "%s: %d of the %d classes of %s have no record (%s%s); the model still has %d outputs",
            root,
            missing,
            cs.num_classes,
            class_set,
            absent[:10],
            " …" if missing > 10 else "",
            cs.num_classes,
        )
    if duplicates := int(arrays["duplicates"]):
        log.warning(
            "%s: dropped %s duplicate records (the same bytes read twice: a copied file?); each is kept once",
            root,
            f"{duplicates:,}",
        )
    return arrays


class EtlHiragana(VisionDataset):
    """Characters of one class set from ETL records (any layout ``maist.data.etl`` reads; the
    name is historical), preprocessed and cached (see the module doc).

    ``images`` is (N, 1, S, S) uint8 as stored (memory-mapped, ``round(255 x)``); ``data`` the
    same as float in [0, 1], ink bright: made on each access, so for small sets and tests only.
    ``targets`` are labels into ``classes``; ``writers`` are the sheet numbers (one per writer).
    ``skipped`` counts the records outside the class set, ``duplicates`` those dropped as copies
    of an earlier one. Indexing gives one (1, S, S) float image and its label.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        class_set: str = "hiragana71",
        preprocess: Preprocess | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
        transform=None,
        target_transform=None,
    ):
        if root is None:
            root = sample_root()
            log.info("data.root is not set: using the generated sample %s (not ETL data)", root)
        super().__init__(str(root), transform=transform, target_transform=target_transform)
        self.preprocess = preprocess or Preprocess()
        self.class_set = get_class_set(class_set)
        self.classes = list(self.class_set.classes)
        arrays = load_arrays(root, class_set, self.preprocess, cache_dir)
        self.images = torch.from_numpy(arrays["images"]).unsqueeze(1)
        self.targets = torch.from_numpy(arrays["labels"])
        self.writers = torch.from_numpy(arrays["writers"])
        self.skipped = int(arrays["skipped"])
        self.duplicates = int(arrays["duplicates"])

    @property
    def data(self) -> torch.Tensor:
        """Every image as float (N, 1, S, S) in [0, 1]: 4 bytes a pixel, made on each access."""
        return to_float(self.images)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img, target = to_float(self.images[index]), int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def writer(self, index: int) -> int:
        return int(self.writers[index])

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.targets.tolist())
        return {self.classes[k]: counts[k] for k in sorted(counts)}

    def extra_repr(self) -> str:
        return (
            f"Classes: {len(self.classes)} ({self.class_set.name})\n"
            f"Writers: {len(torch.unique(self.writers))}\n{self.preprocess}"
        )
