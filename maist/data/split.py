"""Train/validation/test splits as index arrays: by writer, or random stratified by class."""

from __future__ import annotations

import numpy as np

from maist.errors import ConfigError

SPLIT_MODES = ("writer", "random")
SPLITS = ("train", "val", "test")  # the parts, in the order make_split returns them
# The split's defaults (the data module's and the dataset's): a tenth of the writers validate, a
# fifth test, no writer in two parts.
SPLIT_BY, VAL_FRACTION, TEST_FRACTION, SPLIT_SEED = "writer", 0.1, 0.2, 0


def _counts(n: int, fractions: tuple[float, ...]) -> list[int]:
    """How many of ``n`` items go to each later part (the first part takes the rest)."""
    return [int(round(n * f)) for f in fractions]


def split_by_writer(writers: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Parts [train, *fractions] with no writer in two parts; fractions count writers."""
    unique = np.unique(writers)
    rng = np.random.default_rng(seed)
    order = rng.permutation(unique)
    # every part asked for gets at least one writer
    sizes = [max(1, c) if f > 0 else 0 for c, f in zip(_counts(len(unique), fractions), fractions)]
    if sum(sizes) >= len(unique):
        raise ConfigError(
            f"data.split_by=writer: {len(unique)} writer{'s are' if len(unique) != 1 else ' is'} too few to split into "
            f"train and {len(sizes)} more part(s) ({', '.join(f'{f:g}' for f in fractions)} of the writers): use "
            "data.split_by=random, smaller data.val_fraction/test_fraction, or more data"
        )
    groups, start = [], len(unique) - sum(sizes)
    bounds = [order[:start]]
    for size in sizes:
        bounds.append(order[start : start + size])
        start += size
    for chosen in bounds:
        groups.append(np.flatnonzero(np.isin(writers, chosen)))
    return groups


def split_random(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Parts [train, *fractions], stratified: each class split in the same proportions."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        sizes = _counts(len(idx), fractions)
        start = len(idx) - sum(sizes)
        parts[0].append(idx[:start])
        for k, size in enumerate(sizes, start=1):
            parts[k].append(idx[start : start + size])
            start += size
    return [np.sort(np.concatenate(p)) for p in parts]


def make_split(mode: str, labels, writers, fractions, seed) -> list[np.ndarray]:
    if mode == "writer":
        return split_by_writer(np.asarray(writers), tuple(fractions), seed)
    if mode == "random":
        return split_random(np.asarray(labels), tuple(fractions), seed)
    raise ConfigError(f"data.split_by={mode!r}: must be one of {', '.join(SPLIT_MODES)}")
