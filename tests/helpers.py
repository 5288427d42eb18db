"""Helpers shared by the test modules (plain functions; fixtures live in conftest.py).

Import them as ``from tests.helpers import …``: under that one name this module, and the tiny
checkpoint it caches, exists once in a session.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from maist.data.preprocess import Preprocess

REPO = Path(__file__).resolve().parents[1]

# The preprocessing with every clean-up step off: contrast stretch and resize only (what a test of
# one step builds on; the project's defaults, Preprocess(), crop and threshold too).
PLAIN = {
    "threshold": 0.0,
    "despeckle": 0,
    "crop": False,
    "margin": 0.12,
    "crop_mass": 0.0,
    "crop_connect": 0.0,
    "crop_bridge": 0.0,
    "crop_border": 0.0,
    "threshold_low": 0.0,
}


def plain_preprocess(**steps) -> Preprocess:
    """``Preprocess`` with only ``steps`` (and contrast stretch, unless ``contrast`` is given) on."""
    return Preprocess(**{**PLAIN, **steps})


# ---------------------------------------------------------------- configs and train.py

# What every train.py run of the tests sets: quiet and on one thread.
QUIET = ("trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "torch_threads=1")


def compose_cfg(*overrides: str, hydra: bool = False):
    """conf/train.yaml composed with ``overrides``, as train.py composes it (with Hydra's own
    settings under ``hydra`` when ``hydra``); nothing is built."""
    from hydra import compose, initialize_config_dir

    from maist.config import CONFIG_DIR, register_configs

    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def run_python(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 120):
    """``python *args`` in a new process (from ``cwd``), its output captured as text. ``env`` is its
    whole environment; by default this process's, on one OpenMP thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if env is None else env
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_train(*overrides: str, cwd: Path = REPO, env: dict | None = None, check: bool = True, timeout: int = 600):
    """``python train.py *overrides`` with the QUIET settings, from ``cwd``, ``env`` added to this
    process's environment. With ``check``, a failed run fails the test with the ends of its output."""
    proc = run_python(
        str(REPO / "train.py"), *overrides, *QUIET, cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def metrics(run_dir: Path) -> dict:
    """The ``metrics.json`` a train.py run wrote into ``run_dir``."""
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def quiet_trainer(**settings):
    """A ``lightning.Trainer`` on one CPU without progress bar, model summary, checkpoints, logger
    or validation, and ``settings`` (max_steps, callbacks, …) on top."""
    import lightning as L

    quiet = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
    }
    return L.Trainer(**{**quiet, **settings})


# ---------------------------------------------------------------- the tiny model

# Distinct shapes, simple to draw; the tiny model reads only these.
TINY_CHARS = "あいくこしすつてのへもん"
TEST_WRITERS_FROM = 9055  # sample sheets 9055–9060 are held out of the tiny model's training

_lock = threading.RLock()
_cache: dict[str, object] = {}  # the sample's records, the tiny checkpoint and its Predictor, once made


def sample_records(chars: str = TINY_CHARS):
    """(images (N, 127, 128) levels 0..15, chars (N,), sheets (N,)) of the shipped sample."""
    from maist.data.etl import read_etl
    from maist.data.kana import char_to_jis, jis_to_char
    from maist.data.sample import SAMPLE_ZIP

    key = f"records:{chars}"
    with _lock:
        if key not in _cache:
            r = read_etl(SAMPLE_ZIP, codes=[char_to_jis(c) for c in chars])
            _cache[key] = (r.images, np.array([jis_to_char(int(j)) for j in r.jis]), r.sheet.copy())
    return _cache[key]


def build_tiny_checkpoint(path: Path, steps: int = 150, seed: int = 0) -> Path:
    """Train a small DeepMnistCNN on TINY_CHARS of the sample (held-out writers excluded) and
    save it as a MaistModule Lightning checkpoint; a few seconds on one core."""
    import lightning as L

    from maist.data.preprocess import etl_levels_to_float
    from maist.module import MaistModule

    images, chars, sheets = sample_records()
    pre = plain_preprocess()
    x = pre(etl_levels_to_float(images))[:, None]
    y = torch.tensor([TINY_CHARS.index(c) for c in chars])
    train = torch.from_numpy(sheets < TEST_WRITERS_FROM)
    x, y = x[train], y[train]
    torch.manual_seed(seed)
    module = MaistModule(
        net={
            "_target_": "maist.models.DeepMnistCNN",
            "num_classes": len(TINY_CHARS),
            "image_size": pre.image_size,
            "filters": [8, 16],
            "hidden": 64,
            "keep_prob": 1.0,
            "init": "pytorch",
        },
        optimizer={"_target_": "torch.optim.Adam", "lr": 3e-3},
        classes=list(TINY_CHARS),
        class_set="hiragana71",
        preprocess=pre.as_dict(),
    )
    net = module.net
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        i = torch.randint(len(y), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": L.__version__,
            "epoch": 0,
            "global_step": steps,
        },
        path,
    )
    return path


def tiny_checkpoint() -> Path:
    """The session's tiny checkpoint (built on first use, deleted at exit)."""
    with _lock:
        if "ckpt" not in _cache:
            folder = Path(tempfile.mkdtemp(prefix="maist-tiny-"))
            atexit.register(shutil.rmtree, folder, True)
            torch.set_num_threads(1)
            _cache["ckpt"] = build_tiny_checkpoint(folder / "tiny.ckpt")
    return _cache["ckpt"]


def tiny_predictor():
    """The session's Predictor of the tiny checkpoint (made on first use)."""
    from maist.predict import Predictor

    with _lock:
        if "predictor" not in _cache:
            _cache["predictor"] = Predictor.from_checkpoint(tiny_checkpoint())
    return _cache["predictor"]


def paper_picture(levels: np.ndarray) -> np.ndarray:
    """An ETL record (levels 0..15, ink bright) as a picture of dark ink on white, uint8."""
    return np.round(255 * (1 - levels.astype(np.float32) / 15)).astype(np.uint8)


def held_out(char: str, k: int = 0) -> np.ndarray:
    """The ``k``-th record of ``char`` by a writer held out of the tiny model's training."""
    images, chars, sheets = sample_records()
    idx = np.nonzero((chars == char) & (sheets >= TEST_WRITERS_FROM))[0]
    return images[idx[k]]
