"""ETL characters (any supported layout, any class set) as a dataset, in torchvision's manner.

Storage: the records under a root are decoded chunk by chunk (:func:`maist.data.etl.iter_chunks`,
the one reader), preprocessed, and written as uint8 ``round(255 x)`` of the preprocessed values
``x`` in [0, 1] into one on-disk array that is the cache entry (:mod:`maist.data.cache`), loaded
memory-mapped. So a set never needs more memory than a few chunks of records (ETL9G at 64×64:
2.5 GB on disk, not 10 GB of float32 in every process), a warm load maps the file instead of
reading it, and processes that load the same entry share its pages. Files are decoded and
preprocessed side by side on the cores; floats are made per batch (:func:`to_float`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import VisionDataset
from tqdm.auto import tqdm

from maist import checks
from maist.data.cache import RowWriter, cached_arrays, check_arrays, save_small
from maist.data.etl import Duplicates, EtlFormatError, Source, check_size, iter_chunks, list_sources
from maist.data.kana import class_set as get_class_set
from maist.data.preprocess import Preprocess, to_float, to_uint8  # noqa: F401 (the stored format, here too)
from maist.data.split import SPLIT_BY, SPLIT_SEED, SPLITS, TEST_FRACTION, VAL_FRACTION, make_split

log = logging.getLogger(__name__)

CHUNK = 256  # records preprocessed at a time (their float copies: 17 MB at 127 × 128)


def sample_root() -> Path:
    """The generated, non-ETL sample that ships with the package."""
    from maist.data.sample import SAMPLE_ZIP

    return SAMPLE_ZIP


# What load_arrays returns (and caches): one entry per record, with its dimensions ...
PER_RECORD = {"images": 3, "labels": 1, "writers": 1, "jis": 1, "keys": 1, "pixels": 1}
# ... and counts for the whole root.
COUNTS = ("skipped", "duplicates", "same_pixels")


def check_loaded(
    arrays: dict[str, np.ndarray], image_size: int | None = None, class_set: str | None = None
) -> str | None:
    """What is wrong with arrays read back from the cache, or None: their shapes and types, and
    their labels, which must be the class set's labels of their records' codes."""
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
    for key in ("keys", "pixels"):
        if arrays[key].dtype != np.dtype("S16"):
            return f"{key} are {arrays[key].dtype}, not 16-byte digests"
    if class_set is not None:
        labels = label_lookup(class_set)
        jis = arrays["jis"]
        if len(jis) and (jis.min() < 0 or jis.max() >= len(labels)):
            return f"codes outside class set {class_set}"
        if not np.array_equal(labels[jis], arrays["labels"]):
            return f"labels that are not class set {class_set}'s labels of the records' codes"
    return None


def label_lookup(class_set: str) -> np.ndarray:
    """JIS X 0208 code → label of ``class_set`` (-1: not in the set), as one array."""
    cs = get_class_set(class_set)
    codes = np.fromiter(cs.jis_to_label, dtype=np.int64)
    lookup = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
    lookup[codes] = list(cs.jis_to_label.values())
    return lookup


# ---------------------------------------------------------------- building the cache


@dataclass
class _File:
    """One file's records of the class set, preprocessed (what a build worker returns)."""

    images: list[np.ndarray]  # stored uint8 blocks (n, S, S)
    jis: np.ndarray
    sheet: np.ndarray
    keys: np.ndarray
    pixels: np.ndarray
    skipped: int


def _preprocess_file(src: Source, codes: np.ndarray, preprocess: Preprocess, bar) -> _File:
    """Decode one file chunk by chunk and preprocess its kept records ``CHUNK`` at a time."""
    images, jis, sheet, keys, pixels, skipped = [], [], [], [], [], 0
    for chunk in iter_chunks(src, codes, scratch=True):
        for i in range(0, len(chunk.images), CHUNK):
            images.append(preprocess.stored(chunk.images[i : i + CHUNK], src.layout.max_level))
        jis.append(chunk.jis)
        sheet.append(chunk.sheet)
        keys.append(chunk.keys)
        pixels.append(chunk.pixels)
        skipped += chunk.skipped
        bar.update(len(chunk.images) + chunk.skipped)
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    return _File(images, cat(jis, np.int32), cat(sheet, np.int64), cat(keys, "S16"), cat(pixels, "S16"), skipped)


def build_workers(sources: list[Source]) -> int:
    """Files built side by side: one per core (each thread's torch work runs on one thread)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(len(sources), cores or 1))


@contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_arrays(root, class_set: str, preprocess: Preprocess, folder: Path) -> None:
    """Decode, select and preprocess the records under ``root`` into ``folder``: ``images.npy``
    (N, S, S) uint8 (written file by file, never held whole) and ``arrays.npz`` (labels, writers,
    jis, keys, pixels, skipped, duplicates, same_pixels). Records are kept in file order; copies
    are dropped by :class:`~maist.data.etl.Duplicates`. Files are built side by side, one a core."""
    cs = get_class_set(class_set)
    sources = list_sources(root)
    layout = sources[0].layout
    counts = [check_size(src.size, src.name, layout) for src in sources]  # every file, before any decoding
    capacity = sum(counts) - (len(sources) if layout.dummy_first else 0)
    codes = np.fromiter(cs.jis_to_label, dtype=np.int32)
    duplicates = Duplicates()
    jis, writers, keys, pixels, skipped = [], [], [], [], 0
    side, workers = preprocess.image_size, build_workers(sources)
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
        _torch_threads(1 if workers > 1 else torch.get_num_threads()),
        ThreadPoolExecutor(workers, thread_name_prefix="maist-build") as pool,
    ):
        build = partial(_preprocess_file, codes=codes, preprocess=preprocess, bar=bar)
        for part in _in_order(pool, build, sources, window=2 * workers):
            keep = duplicates.first_copies(part.keys, part.pixels)
            rows = np.flatnonzero(keep)
            if part.images:
                stored = np.concatenate(part.images)
                out.append(stored if len(rows) == len(stored) else stored[rows])
            jis.append(part.jis[rows])
            writers.append(part.sheet[rows])
            keys.append(part.keys[rows])
            pixels.append(part.pixels[rows])
            skipped += part.skipped
    if out.count == 0:
        raise EtlFormatError(
            f"{root}: none of its {skipped:,} {layout.name} records belongs to class set "
            f"{class_set!r} ({cs.num_classes} characters, e.g. {''.join(cs.classes[:5])}). "
            "Choose a data.class_set that this set holds, or point data.root at another set."
        )
    jis = np.concatenate(jis)
    save_small(
        folder,
        labels=label_lookup(class_set)[jis],
        writers=np.concatenate(writers),
        jis=jis,
        keys=np.concatenate(keys),
        pixels=np.concatenate(pixels),
        skipped=np.array(skipped),
        duplicates=np.array(duplicates.dropped),
        same_pixels=np.array(duplicates.same_pixels),
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


def _in_order(pool: ThreadPoolExecutor, fn, items: list, window: int):
    """``fn`` over ``items`` on ``pool``, results in order, at most ``window`` submitted ahead (so
    finished files wait in memory only while an earlier one is still being built)."""
    pending = [pool.submit(fn, item) for item in items[:window]]
    for i in range(len(items)):
        result = pending[i].result()
        pending[i] = None
        if i + window < len(items):
            pending.append(pool.submit(fn, items[i + window]))
        yield result


def load_arrays(root, class_set: str, preprocess: Preprocess, cache_dir=None) -> dict[str, np.ndarray]:
    """The records under ``root`` of ``class_set``, preprocessed (cached on disk): ``images``
    (N, S, S) uint8 memory-mapped, ``labels``, ``writers``, ``jis``, ``keys``, ``pixels`` and the
    counts ``skipped``, ``duplicates``, ``same_pixels``."""
    cs = get_class_set(class_set)
    params = {"class_set": class_set, "preprocess": preprocess.as_dict()}
    build = partial(build_arrays, root, class_set, preprocess)
    validate = partial(check_loaded, image_size=preprocess.image_size, class_set=class_set)
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
    if same := int(arrays["same_pixels"]):
        log.warning("%s: %s records have the pixels of another record under another header (kept)", root, f"{same:,}")
    return arrays


class EtlDataset(VisionDataset):
    """The characters of one class set in the ETL records under ``root`` (any layout
    :mod:`maist.data.etl` reads: hiragana, katakana, kanji), preprocessed and cached, as a
    torchvision dataset: ``dataset[i]`` is ``(image, label)``.

    Args:
        root: a folder, file or zip of ETL records (``None``: the generated, non-ETL sample).
        class_set: which characters (:func:`maist.data.kana.class_set`); ``classes`` lists them
            in label order, ``class_to_idx`` maps each to its label.
        split: ``None`` (every record), or ``train``, ``val`` or ``test``: the part of the split
            ``split_by``/``val_fraction``/``test_fraction``/``split_seed`` make, the same as
            :class:`~maist.data.datamodule.MaistDataModule`'s with the same settings (by writer by
            default: no writer in two parts).
        preprocess: the preprocessing (default ``Preprocess()``, what ``train.py`` uses).
        cache_dir: where the preprocessed images are cached (``None``: the default, ``False``: off).
        transform: applied to each image, a PIL image (mode ``L``, S × S, ink bright on black):
            ``torchvision.transforms.ToTensor()`` gives the float (1, S, S) in [0, 1] the networks
            take, exactly what training feeds them.
        target_transform: applied to each label.

    ``images`` is (N, 1, S, S) uint8 as stored (memory-mapped, ``round(255 x)``), ``targets`` the
    labels, ``writers`` the sheet numbers (one per writer); ``skipped`` counts the records outside
    the class set, ``duplicates`` those dropped as copies of an earlier one.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        class_set: str = "hiragana71",
        split: str | None = None,
        preprocess: Preprocess | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
        transform=None,
        target_transform=None,
        split_by: str = SPLIT_BY,
        val_fraction: float = VAL_FRACTION,
        test_fraction: float = TEST_FRACTION,
        split_seed: int = SPLIT_SEED,
    ):
        if split is not None:
            checks.choice("split", split, SPLITS)
        if root is None:
            root = sample_root()
            log.info("data.root is not set: using the generated sample %s (not ETL data)", root)
        super().__init__(str(root), transform=transform, target_transform=target_transform)
        self.preprocess = preprocess or Preprocess()
        self.class_set = get_class_set(class_set)
        self.classes = list(self.class_set.classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.split = split
        arrays = load_arrays(root, class_set, self.preprocess, cache_dir)
        self.skipped = int(arrays["skipped"])
        self.duplicates = int(arrays["duplicates"])
        rows = slice(None)
        if split is not None:
            parts = make_split(split_by, arrays["labels"], arrays["writers"], (val_fraction, test_fraction), split_seed)
            rows = parts[SPLITS.index(split)]
        self.images = torch.from_numpy(arrays["images"]).unsqueeze(1)[rows]
        self.targets = torch.from_numpy(arrays["labels"])[rows]
        self.writers = torch.from_numpy(arrays["writers"])[rows]
        self.keys, self.pixels = arrays["keys"][rows], arrays["pixels"][rows]

    @property
    def data(self) -> torch.Tensor:
        """Every image as float (N, 1, S, S) in [0, 1]: 4 bytes a pixel, made on each access."""
        return to_float(self.images)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img, target = Image.fromarray(self.images[index, 0].numpy()), int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.targets.tolist())
        return {self.classes[k]: counts[k] for k in sorted(counts)}

    def extra_repr(self) -> str:
        return (
            f"Classes: {len(self.classes)} ({self.class_set.name})\n"
            f"Split: {self.split or 'all'}\nWriters: {len(torch.unique(self.writers))}\n{self.preprocess}"
        )
