"""MaistDataModule: splits, samplers and batches straight from the cached uint8 images.

Batches leave the loaders as uint8, as stored (a quarter of the bytes of float32), and become
float in [0, 1] in :meth:`MaistDataModule.on_after_batch_transfer`, on the training device. With a
CUDA trainer (and ``num_workers=0``) the training images are copied to the device once, when the
training loader is made, and batches are indexed there: no host copy per step.
"""

from __future__ import annotations

import logging
import os

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from maist import checks
from maist.data.dataset import EtlDataset, to_float
from maist.data.etl import Duplicates, list_sources
from maist.data.kana import class_set as get_class_set
from maist.data.measure import stroke_width
from maist.data.part import Part, TensorBatches
from maist.data.preprocess import Preprocess
from maist.data.samplers import BatchIndexSampler, ShardBatches
from maist.data.split import SPLIT_BY, SPLIT_MODES, SPLIT_SEED, TEST_FRACTION, VAL_FRACTION, make_split
from maist.distributed import world
from maist.errors import ConfigError

log = logging.getLogger(__name__)

SAMPLERS = ("with_replacement", "epoch")
# Accelerators whose training images are copied to the device once and indexed there.
IMAGES_ON_DEVICE = ("cuda",)


def check_disjoint(root, test_root) -> None:
    """Refuse a ``test_root`` that shares a file with ``root`` (one inside the other, or a link to the
    same file): its records would be training images too."""
    from maist.data.dataset import sample_root

    def files(path) -> dict:
        return {(os.path.realpath(src.path), src.member): src.name for src in list_sources(path)}

    train, test = files(root or sample_root()), files(test_root)
    shared = sorted(set(train) & set(test))
    if shared:
        raise ConfigError(
            f"data.test_root={test_root}: shares {len(shared)} file(s) with data.root={root} (e.g. "
            f"{test[shared[0]]}), so its records would be training images too: point data.root at "
            "the training files only, and data.test_root at others"
        )


class MaistDataModule(L.LightningDataModule):
    """Decoded, preprocessed ETL characters split into train / validation / test, in batches.

    Args:
        root: a folder, file or zip of ETL records (``None``: the generated sample in the package).
        test_root: if set, every selected record under it is the test set; ``root`` feeds train and
            validation only.
        class_set: which characters, by name (:func:`maist.data.kana.class_set`).
        preprocess: :class:`~maist.data.preprocess.Preprocess` settings (contrast, threshold, crop, …).
        image_size: side of the square network input.
        split_by: ``writer`` (no writer on two sides) or ``random`` (stratified by class).
        val_fraction, test_fraction: the share of writers (or images) in validation and test.
        split_seed: the seed of the split, and of nothing else.
        batch_size: the global training batch (split over DDP ranks).
        eval_batch_size: validation and test batch per rank.
        sampler: ``with_replacement`` (the article's ``random_index``) or ``epoch`` (permutations).
        batches_per_epoch: with replacement, the nominal epoch length (default: N / batch_size).
        num_workers: DataLoader worker processes (0: batches are indexed in this process).
        cache_dir: where the preprocessed images are cached (``None``: the default, ``False``: off).
        seed: the run's seed, which orders the batches.
        train_subset: train on the first this many images of the training part only (``None``: all),
            e.g. to learn a few batches by heart (``debug=overfit``).
    """

    def __init__(
        self,
        root: str | None = None,
        test_root: str | None = None,
        class_set: str = "hiragana71",
        preprocess: dict | None = None,
        image_size: int = 28,
        split_by: str = SPLIT_BY,
        val_fraction: float = VAL_FRACTION,
        test_fraction: float = TEST_FRACTION,
        split_seed: int = SPLIT_SEED,
        batch_size: int = 50,
        eval_batch_size: int = 1000,
        sampler: str = "with_replacement",
        batches_per_epoch: int | None = None,
        num_workers: int = 0,
        cache_dir: str | bool | None = None,
        seed: int = 0,
        train_subset: int | None = None,
    ):
        super().__init__()
        checks.choice("data.sampler", sampler, SAMPLERS)
        checks.choice("data.split_by", split_by, SPLIT_MODES)
        for name in ("batch_size", "eval_batch_size"):
            checks.whole(f"data.{name}", locals()[name], 1)
        checks.optional_whole("data.batches_per_epoch", batches_per_epoch, 1)
        checks.whole("data.num_workers", num_workers, 0)
        checks.whole("data.split_seed", split_seed, 0)
        checks.whole("seed", seed, 0)
        checks.optional_whole("data.train_subset", train_subset, 1)
        if (
            checks.fraction("data.val_fraction", val_fraction) + checks.fraction("data.test_fraction", test_fraction)
            >= 1
        ):
            raise ConfigError(
                f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction:g}: "
                "must leave some data for training (below 1)"
            )
        # the classes come from the set's name, so the model is built before any data is read
        self.classes: list[str] = list(get_class_set(class_set).classes)
        self.preprocess = Preprocess(image_size=image_size, **(preprocess or {}))
        self.save_hyperparameters(logger=False)
        self.hparams.preprocess = {k: v for k, v in self.preprocess.as_dict().items() if k != "image_size"}
        self.train_set = self.val_set = self.test_set = None

    # ------------------------------------------------------------------ setup
    def _load(self, root) -> EtlDataset:
        h = self.hparams
        return EtlDataset(root, h.class_set, preprocess=self.preprocess, cache_dir=h.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        if h.test_root:
            check_disjoint(h.root, h.test_root)
        full = self._load(h.root)
        fractions = (h.val_fraction,) if h.test_root else (h.val_fraction, h.test_fraction)
        parts = make_split(h.split_by, full.targets.numpy(), full.writers.numpy(), fractions, h.split_seed)
        train_rows = parts[0] if h.train_subset is None else parts[0][: h.train_subset]
        self.train_set, self.val_set = Part.of(full, train_rows), Part.of(full, parts[1])
        self.test_set = self._test_root_part(full) if h.test_root else Part.of(full, parts[2])
        for name in ("train", "val", "test"):
            log.info("%s: %s", name, getattr(self, f"{name}_set").describe())
        self.ink_ratio = self.train_set.ink_ratio()
        self.stroke_width = stroke_width(self.train_set)  # prediction matches user pictures' strokes to it

    def _test_root_part(self, train: EtlDataset) -> Part:
        """The records under ``test_root`` but copies of ``root``'s (the one rule: the same bytes),
        which are dropped with a warning; records with a training record's pixels under another
        header are counted."""
        test = self._load(self.hparams.test_root)
        copies = Duplicates(train.keys, train.pixels)
        keep = copies.first_copies(test.keys, test.pixels)
        if copies.dropped or copies.same_pixels:
            log.warning(
                "data.test_root=%s: %s of its %s records are also under data.root (dropped from the test set), "
                "%s more have the pixels of a data.root record under another header (kept)",
                self.hparams.test_root,
                f"{copies.dropped:,}",
                f"{len(keep):,}",
                f"{copies.same_pixels:,}",
            )
        return Part.of(test, np.flatnonzero(keep))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def images_device(self) -> torch.device | None:
        """Where the training images should live for batches to be indexed there: the trainer's
        device when its type is in ``IMAGES_ON_DEVICE`` and no worker process makes batches."""
        if self.trainer is None or self.hparams.num_workers:
            return None
        device = self.trainer.strategy.root_device
        return device if device.type in IMAGES_ON_DEVICE else None

    # ------------------------------------------------------------- loaders
    def _loader(self, part, sampler) -> DataLoader:
        return DataLoader(
            TensorBatches(part),
            batch_size=None,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 images → float in [0, 1], on the device the batch was moved to."""
        x, y = batch
        return (to_float(x) if x.dtype == torch.uint8 else x), y

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        if (device := self.images_device()) is not None:
            self.train_set = self.train_set.to(device)  # once: a part already there is kept
        n = len(self.train_set)
        rank, world_size = world(self.trainer)
        sampler = BatchIndexSampler(
            n,
            h.batch_size,
            h.sampler == "with_replacement",
            seed=h.seed,
            batches_per_epoch=h.batches_per_epoch,
            rank=rank,
            world_size=world_size,
            device=device,
        )
        if self.trainer is not None and self.trainer.global_step:  # resuming: continue where it stopped
            sampler.resume_at(self.trainer.global_step)
        return self._loader(self.train_set, sampler)

    def _eval_loader(self, part) -> DataLoader:
        return self._loader(part, ShardBatches(len(part), self.hparams.eval_batch_size, *world(self.trainer)))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)
