"""MaistDataModule: splits, samplers and batches straight from the cached uint8 images.

Batches leave the loaders as uint8, as stored (a quarter of the bytes of float32), and become
float in [0, 1] in :meth:`MaistDataModule.on_after_batch_transfer`, on the training device. With a
CUDA trainer (and ``num_workers=0``) the training images are copied to the device once, when the
training loader is made, and batches are indexed there: no host copy per step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from maist.data.dataset import EtlHiragana, to_float
from maist.data.kana import class_set as get_class_set
from maist.data.preprocess import INK_LEVEL, Preprocess, ink_box
from maist.data.split import SPLIT_MODES, make_split
from maist.distributed import per_rank_batch, shard, world
from maist.errors import ConfigError
from maist.images import stroke_width

log = logging.getLogger(__name__)

SAMPLERS = ("with_replacement", "epoch")
# Accelerators whose training images are copied to the device once and indexed there.
IMAGES_ON_DEVICE = ("cuda",)
COPY_CHUNK = 65_536  # images gathered on the host at a time when copying a part to a device


class TensorBatches(Dataset):
    """Indexed by a tensor of positions, returns that whole batch of a :class:`Part` (uint8
    images as stored, and labels): no per-sample collation."""

    def __init__(self, part: Part):
        self.part = part

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, idx: torch.Tensor):
        return self.part.images(idx), self.part.targets[idx.to(self.part.targets.device)]


class BatchIndexSampler:
    """Yields index tensors: ``batch_size`` drawn with replacement each step (the article's
    ``random_index(50)``), or the batches of a fresh permutation each epoch.

    An epoch's batches are a function of (``seed``, epoch) alone, drawn at once when the epoch
    starts; :meth:`resume_at` starts the next epoch part-way, so a run resumed mid-epoch draws
    exactly the batches an uninterrupted run would have drawn. ``batch_size`` is the global batch:
    with ``world_size`` processes, rank ``rank`` takes its slice of each global batch, so the
    ranks train on disjoint parts of one draw. With ``device`` set (where the images live), each
    epoch's draw is moved there once, so no step copies indices from the host.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        replacement: bool,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ):
        if n == 0:
            raise ValueError("cannot sample batches from an empty set")
        self.per_rank = per_rank_batch(batch_size, world_size)
        self.rank, self.device = rank, device
        self.n, self.batch_size, self.replacement = n, batch_size, replacement
        self.seed, self.shuffle, self.drop_last, self.epoch = seed, shuffle, drop_last, 0
        self.batches_per_epoch = batches_per_epoch or max(1, n // batch_size)
        self._resume: tuple[int, int] | None = None  # (epoch, first batch) for the next iteration

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, step: int) -> None:
        """Continue at global batch ``step`` (counted from 0 over epochs of ``len(self)`` batches)."""
        self._resume = divmod(int(step), len(self))

    def __len__(self) -> int:
        if self.replacement:
            return self.batches_per_epoch
        full, rest = divmod(self.n, self.batch_size)
        return full if (self.drop_last and full) else full + bool(rest)

    def _generator(self) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state >> np.uint64(1)))

    def __iter__(self):
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start, self._resume = self._resume[1], None
        mine = slice(self.rank * self.per_rank, (self.rank + 1) * self.per_rank)
        if self.replacement:
            draws = torch.randint(self.n, (len(self), self.batch_size), generator=self._generator())
            yield from draws[start:, mine].to(self.device)
            return
        order = torch.randperm(self.n, generator=self._generator()) if self.shuffle else torch.arange(self.n)
        order = order.to(self.device)
        for k in range(start, len(self)):
            yield order[k * self.batch_size : (k + 1) * self.batch_size][mine]


class ShardBatches:
    """Evaluation batches: this rank's share of ``range(n)`` in order, ``batch_size`` at a time. Over
    all ranks every example comes exactly once (no padding, no example counted twice)."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.indices = torch.from_numpy(shard(n, rank, world_size))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        yield from self.indices.split(self.batch_size)


def _check_int(name: str, value, minimum: int = 1) -> int:
    """A config value that must be a whole number ≥ ``minimum`` (one-line ConfigError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name}={value!r}: must be a whole number ≥ {minimum}")
    return int(value)


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name}={value!r}: must be a number in [0, 1)")
    return float(value)


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
    """

    def __init__(
        self,
        root: str | None = None,
        test_root: str | None = None,
        class_set: str = "hiragana71",
        preprocess: dict | None = None,
        image_size: int = 28,
        split_by: str = "writer",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        batch_size: int = 50,
        eval_batch_size: int = 1000,
        sampler: str = "with_replacement",
        batches_per_epoch: int | None = None,
        num_workers: int = 0,
        cache_dir: str | bool | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if sampler not in SAMPLERS:
            raise ConfigError(f"data.sampler={sampler!r}: must be one of {', '.join(SAMPLERS)}")
        if split_by not in SPLIT_MODES:
            raise ConfigError(f"data.split_by={split_by!r}: must be one of {', '.join(SPLIT_MODES)}")
        for name in ("batch_size", "eval_batch_size", "image_size"):
            _check_int(f"data.{name}", locals()[name])
        if batches_per_epoch is not None:
            _check_int("data.batches_per_epoch", batches_per_epoch)
        _check_int("data.num_workers", num_workers, minimum=0)
        _check_int("data.split_seed", split_seed, minimum=0)
        _check_int("seed", seed, minimum=0)
        if (
            _check_fraction("data.val_fraction", val_fraction) + _check_fraction("data.test_fraction", test_fraction)
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
    def _load(self, root) -> EtlHiragana:
        h = self.hparams
        return EtlHiragana(root, h.class_set, self.preprocess, h.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        full = self._load(h.root)
        fractions = (h.val_fraction,) if h.test_root else (h.val_fraction, h.test_fraction)
        parts = make_split(h.split_by, full.targets.numpy(), full.writers.numpy(), fractions, h.split_seed)
        self.train_set, self.val_set = (Part.of(full, p) for p in parts[:2])
        self.test_set = Part.of(self._load(h.test_root)) if h.test_root else Part.of(full, parts[2])
        for name in ("train", "val", "test"):
            log.info("%s: %s", name, getattr(self, f"{name}_set").describe())
        self.ink_ratio = self.train_set.ink_ratio()
        self.stroke_width = stroke_width(self.train_set)  # prediction matches user pictures' strokes to it

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


@dataclass
class Part:
    """One side of a split: its images, labels and writers.

    ``store`` holds uint8 images (M, 1, S, S) as cached, ``round(255 x)`` of the preprocessed
    values x in [0, 1]. For a part of a split it is the whole set's memory-mapped array, shared
    by the parts (and by every process that maps the cache entry), never copied; ``rows`` are
    the store rows that are this part's, in order (None: all of them). Read images through
    :meth:`images` (uint8) or :meth:`float_images` (float in [0, 1], what the networks take),
    by position in the part: an int, a slice, positions (list, array or tensor), or None (all).
    """

    store: torch.Tensor
    targets: torch.Tensor
    writers: torch.Tensor
    rows: torch.Tensor | None = None

    @classmethod
    def of(cls, ds: EtlHiragana, idx: np.ndarray | None = None) -> Part:
        if idx is None:
            return cls(ds.images, ds.targets, ds.writers)
        rows = torch.as_tensor(idx, dtype=torch.long)
        return cls(ds.images, ds.targets[rows], ds.writers[rows], rows)

    def __len__(self) -> int:
        return len(self.targets)

    def images(self, idx=None) -> torch.Tensor:
        """uint8 images (k, 1, S, S) at positions ``idx`` of this part (see the class doc)."""
        if isinstance(idx, int):
            idx = [idx]
        if isinstance(idx, (list, np.ndarray)):
            idx = torch.as_tensor(idx, dtype=torch.long)
        rows = idx if self.rows is None else self.rows[slice(None) if idx is None else idx]
        if rows is None:
            return self.store
        if isinstance(rows, torch.Tensor):
            rows = rows.to(self.store.device)
        return self.store[rows]

    def float_images(self, idx=None) -> torch.Tensor:
        """The images at ``idx`` as float32 in [0, 1] (4 bytes a pixel: ask for what you need)."""
        return to_float(self.images(idx))

    @property
    def data(self) -> torch.Tensor:
        """Every image of the part as float (N, 1, S, S): made on each access (small sets)."""
        return self.float_images()

    @property
    def device(self) -> torch.device:
        return self.store.device

    def to(self, device: torch.device | str) -> Part:
        """This part with its own images and labels on ``device`` (a compact copy, gathered
        ``COPY_CHUNK`` images at a time); itself if they are there already."""
        device = torch.device(device)
        if self.rows is None and self.store.device == device and self.targets.device == device:
            return self
        store = torch.empty((len(self), *self.store.shape[1:]), dtype=torch.uint8, device=device)
        for start in range(0, len(self), COPY_CHUNK):
            chunk = slice(start, start + COPY_CHUNK)
            store[chunk] = self.images(chunk).to(device)
        return Part(store, self.targets.to(device), self.writers)

    def ink_ratio(self, sample: int = 20_000, chunk: int = 4096) -> float:
        """Median over images of the ink box's longer side over the frame side: how much of the
        frame a character fills. The box is :func:`~maist.data.preprocess.ink_box`'s, the one
        prediction frames user pictures by (:func:`maist.images.normalize_ink`). Measured on
        ``sample`` images evenly spread over the part (all of a smaller part), ``chunk`` at a
        time; images without ink are left out (1.0 when none has any)."""
        n = len(self)
        if n == 0:
            return 1.0
        positions = torch.linspace(0, n - 1, sample).round().long().unique() if n > sample else torch.arange(n)
        size = self.store.shape[-1]
        sides = []
        for part in positions.split(chunk):
            x = self.float_images(part)[:, 0].cpu()
            top, bottom, left, right = ink_box(x)
            inked = (x > INK_LEVEL).flatten(1).any(1)
            sides.append((torch.maximum(bottom - top, right - left) + 1)[inked].float() / size)
        side = torch.cat(sides)
        return float(side.median()) if len(side) else 1.0

    def describe(self) -> str:
        return (
            f"{len(self):,} images, {len(torch.unique(self.writers))} writers, "
            f"{len(torch.unique(self.targets))} classes"
        )
