"""Shared fixtures: synthetic ETL files, the session's tiny model, configs and train.py runs.

Every data test writes its own small ETL8G files under ``tmp_path``; the only real ETL material
used is the team's internal ``../shared/data/etl-dev/`` (read in place, never copied into the
repository; tests that need it skip when it is absent).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from maist.data.etl import ETL8G, pack_records
from maist.data.kana import char_to_jis
from maist.files import write_atomic
from tests.helpers import REPO, compose_cfg, tiny_checkpoint, tiny_predictor

ETL_DEV = REPO.parent / "shared" / "data" / "etl-dev"


# ---------------------------------------------------------------- synthetic records


def blob_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 127, 128) levels 0..15: faint noise plus one dark rectangle per image.

    Every image differs (its rectangle's place and size depend on its index and the seed),
    so a test can tell records apart by their pixels.
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 2, size=(n, ETL8G.height, ETL8G.width), dtype=np.uint8)
    for i in range(n):
        top, left = rng.integers(10, 70), rng.integers(10, 70)
        h, w = rng.integers(15, 50), rng.integers(15, 50)
        images[i, top : top + h, left : left + w] = rng.integers(9, 16)
    return images


@pytest.fixture
def make_records():
    """Factory: write one ETL8G file with pack_records and return what it holds.

    ``make_records(folder, name, jis=[...], sheet=[...] or int, images=None, serial=None,
    reading=None, seed=0)`` → dict(path, images, jis, sheet, serial).
    """

    def make(folder, name="ETL8G_01", *, jis, sheet, images=None, serial=None, reading=None, seed=0):
        folder = Path(folder)
        jis = np.asarray(jis, dtype=np.int64)
        n = len(jis)
        sheet = np.broadcast_to(np.asarray(sheet, dtype=np.int64), (n,)).copy()
        if images is None:
            images = blob_images(n, seed)
        serial = np.arange(1, n + 1) if serial is None else np.asarray(serial)
        path = folder / name
        write_atomic(path, pack_records(images, jis, sheet, serial, reading))
        return {"path": path, "images": np.asarray(images), "jis": jis, "sheet": sheet, "serial": serial}

    return make


@pytest.fixture
def hiragana_folder(make_records, tmp_path):
    """Factory: an ETL8G-like folder where each writer writes every character of ``chars`` once.

    Writers are split across ETL8G_01 and ETL8G_02 (first half, second half), records of one
    writer follow each other, like AIST's files. Returns dict(root, jis, sheet, images).
    """

    def make(chars: str, writers, name: str = "etl", seed: int = 0, extra_jis=()):
        root = tmp_path / name
        codes = [char_to_jis(c) for c in chars] + list(extra_jis)
        writers = list(writers)
        half = (len(writers) + 1) // 2
        parts = []
        for k, group in enumerate((writers[:half], writers[half:]), start=1):
            if not group:
                continue
            jis = np.tile(codes, len(group))
            sheet = np.repeat(group, len(codes))
            parts.append(make_records(root, f"ETL8G_{k:02d}", jis=jis, sheet=sheet, seed=seed + k))
        return {
            "root": root,
            "jis": np.concatenate([p["jis"] for p in parts]),
            "sheet": np.concatenate([p["sheet"] for p in parts]),
            "images": np.concatenate([p["images"] for p in parts]),
        }

    return make


# ---------------------------------------------------------------- the tiny model, configs, runs


@pytest.fixture(scope="session")
def tiny_ckpt() -> Path:
    """The session's tiny checkpoint (tests.helpers.tiny_checkpoint: 12 kana of the shipped
    sample, trained once per session on first use)."""
    return tiny_checkpoint()


@pytest.fixture(scope="session")
def predictor():
    """The session's Predictor of the tiny checkpoint."""
    return tiny_predictor()


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory) -> Path:
    """One ``data.cache_dir`` for every train.py run on the shipped sample in the session, so the
    sample is decoded once per preprocessing (the cache is safe across processes: a file lock).
    A test that checks that nothing was decoded gives its run an empty cache folder of its own."""
    return tmp_path_factory.mktemp("sample-cache")


@pytest.fixture
def run_cfg(tmp_path):
    """Factory: ``run_cfg(*overrides)`` is compose_cfg of a run whose output goes to tmp_path/run
    and whose cache, tmp_path/cache, stays absent unless data is decoded; one training step unless
    ``overrides`` set trainer.max_steps."""

    def make(*overrides: str):
        steps = [] if any(o.startswith("trainer.max_steps") for o in overrides) else ["trainer.max_steps=1"]
        return compose_cfg(
            *overrides, f"paths.output_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}", *steps
        )

    return make


# ---------------------------------------------------------------- real internal data


@pytest.fixture(scope="session")
def etl_dev() -> Path:
    """``../shared/data/etl-dev`` (the team's internal ETL material), or skip."""
    if not ETL_DEV.is_dir():
        pytest.skip(
            f"internal ETL test data not found at {ETL_DEV} (it is never part of the repository; "
            "tests on real handwriting run only where ../shared/data/etl-dev/ exists)"
        )
    return ETL_DEV


def etl_dev_set(root: Path, name: str) -> Path:
    path = root / name
    if not any(path.glob("ETL8G_*")):
        pytest.skip(f"{path}: no ETL8G_nn files (internal ETL test data incomplete)")
    return path


@pytest.fixture
def scratch_cache(tmp_path):
    """A cache folder that is deleted after the test, so nothing derived from real ETL data
    outlives it (pytest otherwise keeps recent tmp_path folders)."""
    folder = tmp_path / "cache"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Tests that read the internal handwriting are `real_data` (they use the etl_dev fixture)."""
    for item in items:
        if "etl_dev" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)
