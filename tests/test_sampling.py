"""Which batches a run draws: a function of `seed` (not of the split), the same after resuming
mid-epoch, and the per-step randomness (dropout, augmentation) a function of (seed, step)."""

from __future__ import annotations

import pytest
import torch

from maist.data.datamodule import BatchIndexSampler, MaistDataModule
from maist.module import MaistModule


def epochs(sampler: BatchIndexSampler, first: int, count: int) -> list[torch.Tensor]:
    out = []
    for epoch in range(first, first + count):
        sampler.set_epoch(epoch)
        out += list(sampler)
    return out


@pytest.mark.parametrize("replacement", [True, False])
@pytest.mark.parametrize("step", [0, 1, 6, 7, 12, 20])  # 7 batches an epoch: starts, middles, ends
def test_resuming_at_any_step_draws_the_same_batches(replacement, step):
    full = epochs(BatchIndexSampler(73, 10, replacement, seed=3), 0, 4)
    assert len(full) == 28
    resumed = BatchIndexSampler(73, 10, replacement, seed=3)
    resumed.resume_at(step)
    again = epochs(resumed, step // 7, 4 - step // 7)
    assert len(again) == 28 - step
    for a, b in zip(again, full[step:]):
        assert torch.equal(a, b)


def test_seed_changes_the_batches_and_split_seed_only_the_split(hiragana_folder, tmp_path):
    folder = hiragana_folder("あいうえおかきくけこ", range(1, 21))

    def first_batches(**kw):
        dm = MaistDataModule(
            root=str(folder["root"]),
            class_set="hiragana71",
            cache_dir=str(tmp_path / "c"),
            batch_size=8,
            val_fraction=0.2,
            test_fraction=0.2,
            **kw,
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(0)
        return dm.train_set.writers, [b for _, b in zip(range(3), loader)]

    writers0, seed0 = first_batches(seed=0, split_seed=0)
    writers1, seed1 = first_batches(seed=1, split_seed=0)
    writers_s, _ = first_batches(seed=0, split_seed=1)
    assert torch.equal(writers0, writers1)  # seed leaves the split alone …
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(seed0, seed1))  # … and changes the batches
    assert not torch.equal(writers0, writers_s)  # split_seed changes the split


def module(seed: int) -> MaistModule:
    return MaistModule(
        net={
            "_target_": "maist.models.DeepMnistCNN",
            "num_classes": 5,
            "filters": [4, 8],
            "hidden": 16,
            "keep_prob": 0.5,
        },
        optimizer={"_target_": "torch.optim.Adam", "lr": 1e-3},
        augment={"_target_": "maist.augment.BatchAffine", "rotate": 15, "translate": 0.1},
        seed=seed,
    )


def step_draw(m: MaistModule, x: torch.Tensor) -> torch.Tensor:
    """What training step 0 feeds forward: augmented, then through dropout."""
    m.train()
    m.on_train_batch_start((x, None), 0)
    return m(m.augment(x))


def test_dropout_and_augmentation_follow_seed_and_step():
    x = torch.rand(4, 1, 28, 28)
    a, b, c = module(0), module(0), module(1)
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    torch.manual_seed(123)  # whatever came before does not matter
    first = step_draw(a, x)
    torch.manual_seed(456)
    assert torch.equal(step_draw(b, x), first)
    assert not torch.allclose(step_draw(c, x), first)
    assert a.step_seed(0) != a.step_seed(1)
