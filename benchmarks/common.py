"""What the benchmarks share: the benchmark config and its Trainer, whole train.py runs, a predictor
with fresh weights, generated ETL folders, the per-record loader of published code and the plain
PyTorch training loop that Lightning is measured against."""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from maist.config import CONFIG_DIR, register_configs
from maist.data.etl import ETL8G, ETL9G, Layout, pack_records
from maist.trainer import make_trainer

REPO = Path(__file__).resolve().parents[1]
ETL_DEV = REPO.parent / "shared" / "data" / "etl-dev"  # the team's internal handwriting, never copied here


# ---------------------------------------------------------------- configs and Trainers


def compose_cfg(experiment: str, root: str | None, cache_dir: str, out: str, extra=()):
    """``experiment`` as train.py composes it, for a benchmark in one process: data from ``root``
    (None: the shipped sample) cached in ``cache_dir`` (``"false"``: no cache), output in ``out``,
    no feature-map figures or checkpoints, no progress bar or model summary; ``extra`` overrides last."""
    register_configs()
    overrides = [
        f"experiment={experiment}",
        f"data.cache_dir={cache_dir}",
        f"paths.output_dir={out}",
        "~callbacks.feature_maps",
        "~callbacks.model_checkpoint",
        "~callbacks.last_checkpoint",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *([f"data.root={root}"] if root else []),
        *extra,
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def datamodule(cfg):
    """``cfg``'s data module, set up for fitting."""
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    return dm


def configured_loggers(cfg) -> list | bool:
    """``cfg``'s loggers (False: none configured)."""
    return [instantiate(c) for c in cfg.logger.values()] if cfg.get("logger") else False


def configured_callbacks(cfg, logger: bool) -> list:
    """The run's configured callbacks and schedules (``lr_monitor`` only with a logger)."""
    configured = {**cfg.callbacks, **(cfg.get("schedule") or {})}
    return [instantiate(c) for k, c in configured.items() if c and "_target_" in c and (logger or k != "lr_monitor")]


def bench_trainer(cfg, steps: int, callbacks: list, logger):
    """``cfg``'s Trainer (as ``train.py`` makes it) for ``steps`` steps, without checkpoints or validation."""
    return make_trainer(
        cfg, max_steps=steps, callbacks=callbacks, logger=logger, enable_checkpointing=False, limit_val_batches=0
    )


def plain_loop(cfg, model, part, steps: int, precision: str = "32-true"):
    """The plain PyTorch loop that Lightning is measured against, ``steps`` steps: a batch of
    ``cfg.data.batch_size`` drawn with replacement from ``part`` (a data module's part, on the
    model's device), made float per batch as the data module does, the model's augmentation,
    forward and loss (under bf16 autocast for a bf16 ``precision``), backward, and a step of
    the module's optimizer (``cfg.model.optimizer``, fused on a GPU as the module makes it). A
    generator: it yields each step's number before the step runs, so that the caller can read its
    clock there (and after the loop)."""
    net = model.net
    model.train()
    built = model.configure_optimizers()  # the module's own optimizer (fused on a GPU); its schedule unused
    opt = built["optimizer"] if isinstance(built, dict) else built
    bs = int(cfg.data.batch_size)
    gen = torch.Generator(part.device).manual_seed(0)
    bf16 = precision.startswith("bf16")
    autocast = torch.autocast(part.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for step in range(steps):
        yield step
        idx = torch.randint(len(part.targets), (bs,), generator=gen, device=part.device)
        x, y = part.float_images(idx), part.targets[idx]
        with autocast:
            if model.augment is not None:
                x = model.augment(x)
            loss = model.loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


# ---------------------------------------------------------------- whole runs and predictors

# A run of which only the metrics count: no test analysis, no feature-map figures.
LEAN = ("analyse_test=false", "~callbacks.feature_maps")


def train_run(out: Path, cache_dir, overrides: list[str]) -> dict:
    """``python train.py`` with ``overrides`` in a fresh process, into ``out``, its data cached in
    ``cache_dir`` (``"false"``: no cache), without progress bar (``overrides`` come last and may
    change that): its ``metrics.json``. A failed run exits with its stderr."""
    cmd = [
        sys.executable,
        "train.py",
        f"hydra.run.dir={out}",
        f"data.cache_dir={cache_dir}",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((Path(out) / "metrics.json").read_text())


def fresh_predictor():
    """A Predictor of the article's CNN (DeepMnistCNN, 71 hiragana, 28×28) with fresh weights
    (seed 0) and the project's preprocessing: for speed, which does not depend on the weights."""
    from maist.data.kana import HIRAGANA71
    from maist.data.preprocess import Preprocess
    from maist.models import DeepMnistCNN
    from maist.predict import Predictor

    torch.manual_seed(0)
    return Predictor(
        DeepMnistCNN(num_classes=71), list(HIRAGANA71), Preprocess().as_dict(), source="fresh DeepMnistCNN"
    )


# ---------------------------------------------------------------- generated ETL folders


def random_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 127, 128) levels: faint noise (0–1) and 2 ink rectangles (9–15) per image."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 2, size=(n, 127, 128), dtype=np.uint8)
    tops = rng.integers(8, 80, size=(n, 2))
    lefts = rng.integers(8, 80, size=(n, 2))
    sizes = rng.integers(6, 40, size=(n, 2, 2))
    inks = rng.integers(9, 16, size=(n, 2))
    for i in range(n):
        for k in range(2):
            t, l = tops[i, k], lefts[i, k]
            images[i, t : t + sizes[i, k, 0], l : l + sizes[i, k, 1]] = inks[i, k]
    return images


def generate_folder(folder: Path, layout: Layout, codes, n_files: int, writers_per_file: int, seed: int = 0) -> int:
    """Write ``layout``'s files ``<name>_01`` … ``<name>_nn`` (ETL8G, ETL9G: the G-type layouts,
    127×128 at 16 levels) into ``folder``, in each of which ``writers_per_file`` writers write
    every JIS code of ``codes`` once, one writer's records after the other. Images are
    :func:`random_images`, the same in every file; sheet and serial numbers are each file's own
    (no record is a copy of another). Returns the number of records."""
    folder.mkdir(parents=True, exist_ok=True)
    codes = np.asarray(codes, dtype=np.int64)
    per_file = writers_per_file * len(codes)
    jis = np.tile(codes, writers_per_file)
    sheet = np.repeat(np.arange(1, writers_per_file + 1), len(codes))
    base = pack_records(random_images(per_file, seed), jis, sheet, layout=layout)  # one file's bytes, once
    recs = np.frombuffer(bytearray(base), dtype=layout.dtype)  # writable structured view
    for k in range(n_files):
        recs["sheet"] = sheet + k * writers_per_file  # cheap: only the header fields change
        recs["serial"] = np.arange(k * per_file + 1, (k + 1) * per_file + 1)
        with open(folder / f"{layout.name}_{k + 1:02d}", "wb") as f:
            f.write(recs.data)
    return n_files * per_file


# The struct formats of AIST's unpack.py (the image is field 14: 8,128 bytes, 4 bits a pixel).
STRUCT_FORMATS = {ETL8G.name: ">2H8sI4B4H2B30x8128s11x", ETL9G.name: ">2H8sI4B4H2B34x8128s7x"}


def per_record_images(paths: list[Path], layout: Layout):
    """The per-record loader most published code uses, for ``layout`` (ETL8G, ETL9G) files: read
    each record, ``struct.unpack`` it and ``PIL.Image.frombytes('F', (128, 127), image, 'bit', 4)``
    its image. Yields the PIL images (levels 0..15), file after file."""
    from PIL import Image

    fmt = STRUCT_FORMATS[layout.name]
    size = struct.calcsize(fmt)
    for path in paths:
        with open(path, "rb") as f:
            while len(s := f.read(size)) == size:
                yield Image.frombytes("F", (layout.width, layout.height), struct.unpack(fmt, s)[14], "bit", 4)
