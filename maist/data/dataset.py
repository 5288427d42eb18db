"""ETL characters (any supported layout, any class set) as an in-memory dataset, in
torchvision's manner."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import VisionDataset

from maist.data.cache import cached_arrays, check_arrays
from maist.data.etl import EtlFormatError, read_etl8g
from maist.data.kana import class_set as get_class_set
from maist.data.preprocess import Preprocess, etl_levels_to_float

log = logging.getLogger(__name__)


def sample_root() -> Path:
    """The generated, non-ETL sample that ships with the package."""
    from maist.data.sample import SAMPLE_ZIP

    return SAMPLE_ZIP


# What load_arrays returns (and caches): one entry per record, with its dimensions ...
PER_RECORD = {"images": 3, "labels": 1, "writers": 1, "jis": 1}
# ... and counts for the whole root.
COUNTS = ("skipped", "duplicates")


def check_loaded(arrays: dict[str, np.ndarray]) -> str | None:
    """What is wrong with arrays read back from the cache, or None."""
    if problem := check_arrays(arrays, PER_RECORD, COUNTS):
        return problem
    if arrays["images"].dtype != np.float32:
        return f"images are {arrays['images'].dtype}, not float32"
    for key in ("labels", "writers", "jis", *COUNTS):
        if arrays[key].dtype.kind not in "iu":
            return f"{key} are {arrays[key].dtype}, not integers"
    return None


def load_arrays(root, class_set: str, preprocess: Preprocess, cache_dir=None) -> dict[str, np.ndarray]:
    """Decode, select and preprocess the records under ``root`` (cached on disk)."""
    cs = get_class_set(class_set)

    def compute() -> dict[str, np.ndarray]:
        log.info("decoding and preprocessing %s (once: the result is cached)", root)
        recs = read_etl8g(root, jis=cs.jis_to_label)
        if len(recs) == 0:
            raise EtlFormatError(
                f"{root}: none of its {recs.skipped:,} {recs.layout} records belongs to class set "
                f"{class_set!r} ({cs.num_classes} characters, e.g. {''.join(cs.classes[:5])}). "
                "Choose a data.class_set that this set holds, or point data.root at another set."
            )
        if recs.skipped:
            log.info("%s: skipped %d records of characters outside %s", root, recs.skipped, class_set)
        lookup = np.full(max(cs.jis_to_label) + 1, -1, dtype=np.int64)
        lookup[list(cs.jis_to_label)] = list(cs.jis_to_label.values())
        labels = lookup[recs.jis]
        images = preprocess(etl_levels_to_float(recs.images, recs.max_level)).numpy()
        return {"images": images, "labels": labels, "writers": recs.sheet.astype(np.int64),
                "jis": recs.jis, "skipped": np.array(recs.skipped),
                "duplicates": np.array(recs.duplicates)}

    params = {"class_set": class_set, "preprocess": preprocess.as_dict()}
    arrays = cached_arrays(root, params, compute, cache_dir, validate=check_loaded)
    present = np.zeros(cs.num_classes, dtype=bool)
    present[arrays["labels"]] = True
    if missing := int((~present).sum()):  # info, not a warning: partial sets are common
        absent = "".join(c for c, here in zip(cs.classes, present) if not here)
        log.info("%s: %d of the %d classes of %s have no record (%s%s); the model still has %d "
                 "outputs", root, missing, cs.num_classes, class_set, absent[:10],
                 " …" if missing > 10 else "", cs.num_classes)
    if duplicates := int(arrays["duplicates"]):
        log.warning("%s: dropped %s duplicate records (the same bytes read twice: a copied "
                    "file?); each is kept once", root, f"{duplicates:,}")
    return arrays


class EtlHiragana(VisionDataset):
    """Characters of one class set from ETL records (any layout ``maist.data.etl`` reads; the
    name is historical), preprocessed and held in memory.

    ``data`` is (N, 1, S, S) float in [0, 1], ink bright; ``targets`` are labels into
    ``classes``; ``writers`` are the sheet numbers (one per writer). ``skipped`` counts the
    records outside the class set, ``duplicates`` those dropped as copies of an earlier one.
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
        self.data = torch.from_numpy(arrays["images"]).unsqueeze(1)
        self.targets = torch.from_numpy(arrays["labels"])
        self.writers = torch.from_numpy(arrays["writers"])
        self.skipped = int(arrays["skipped"])
        self.duplicates = int(arrays["duplicates"])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img, target = self.data[index], int(self.targets[index])
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
        return (f"Classes: {len(self.classes)} ({self.class_set.name})\n"
                f"Writers: {len(torch.unique(self.writers))}\n{self.preprocess}")

