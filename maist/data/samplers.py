"""Which examples each step and each evaluation batch takes, on every rank: the training sampler
(the article's ``random_index`` with replacement, or epochs of permutations) and the evaluation
shards."""

from __future__ import annotations

import numpy as np
import torch

from maist.distributed import per_rank_batch, shard


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
