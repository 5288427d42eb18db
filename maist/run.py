"""Train and/or evaluate one configured run; the logic behind train.py.

Every setting, the checkpoint and the model are checked before any data is decoded: the data
module, the model and the callbacks are built (their constructors check their settings) and a
checkpoint is read and matched first; only then are the records decoded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from maist import checks
from maist.analysis import analyse_test
from maist.callbacks.checkpoints import LastCheckpoint, remove_stale_temporaries
from maist.checkpoint import build_module as checkpoint_module
from maist.checkpoint import check_resumable, data_spec, read_checkpoint, state_dict_problem
from maist.config import task_of
from maist.distributed import end_launched_ranks, launch_ranks_as_this_job, one_job_of_processes
from maist.errors import CheckpointError, ConfigError
from maist.files import write_atomic
from maist.module import PER_CLASS, MaistModule
from maist.tracking import log_summary
from maist.trainer import make_trainer

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
TEST_CHECKPOINTS = ("best", "last")


def _instantiate_all(group: DictConfig | None) -> list:
    return [instantiate(c, _convert_="all") for c in (group or {}).values() if c is not None and "_target_" in c]


def check_settings(cfg: DictConfig) -> None:
    """The run-level settings and the trainer keys MAIST relies on (the data, the model and the
    callbacks check their own when they are built)."""
    checks.optional_whole("torch_threads", cfg.get("torch_threads"), 1)
    checks.whole("seed", cfg.seed)
    for key in ("train", "test", "analyse_test"):
        checks.flag(key, cfg.get(key, True))
    checks.choice("test_ckpt", cfg.get("test_ckpt", "best"), TEST_CHECKPOINTS)
    trainer = cfg.trainer
    if cfg.train:
        checks.whole(
            "trainer.max_steps", trainer.max_steps, 1, why=" (the steps to train; train=false evaluates a checkpoint)"
        )
    if trainer.get("check_val_every_n_epoch") is None:
        checks.whole("trainer.val_check_interval", trainer.get("val_check_interval", 1000), 1, why=" (steps)")
    checks.whole("trainer.log_every_n_steps", trainer.get("log_every_n_steps", 50), 1)


def _align_data_with_checkpoint(cfg: DictConfig, ckpt: dict) -> None:
    """Evaluating a checkpoint: use the class set, image size and preprocessing it was trained with."""
    spec = data_spec(ckpt)
    with open_dict(cfg):
        cfg.data.class_set = spec["class_set"]
        cfg.data.image_size = spec["image_size"]
        cfg.data.preprocess = spec["preprocess"]
    log.info("evaluating %s with its own class set %s and preprocessing %s", cfg.ckpt_path, spec["class_set"], spec)


def _read_given_checkpoint(cfg: DictConfig) -> dict | None:
    """The checkpoint named by ``ckpt_path``, checked before any data is decoded: one to evaluate
    (``train=false``), or one to resume that must match the configured model and classes."""
    if not cfg.ckpt_path:
        if not cfg.train:
            raise ConfigError("train=false evaluates a checkpoint: pass ckpt_path=…/checkpoints/best.ckpt")
        return None
    if cfg.train:
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        return check_resumable(cfg.ckpt_path, model_cfg, cfg.data.class_set)
    ckpt = read_checkpoint(cfg.ckpt_path)
    _align_data_with_checkpoint(cfg, ckpt)
    return ckpt


def build_module(cfg: DictConfig, datamodule) -> MaistModule:
    """The configured model for ``datamodule``'s classes and preprocessing (its training images'
    measures are recorded once they are decoded: :meth:`MaistModule.record_training_images`)."""
    return instantiate(
        cfg.model,
        classes=datamodule.classes,
        class_set=datamodule.hparams.class_set,
        preprocess=datamodule.preprocess.as_dict(),
        seed=cfg.seed,
        _recursive_=False,
    )


def run(cfg: DictConfig) -> dict:
    """Fit and/or test as configured; writes metrics.json into the run folder and returns it."""
    with one_job_of_processes():  # a sweep's next job starts ranks of its own
        return _run(cfg)


def _run(cfg: DictConfig) -> dict:
    out = Path(cfg.paths.output_dir)
    check_settings(cfg)
    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
    _resume_after_requeue(cfg, out)
    ckpt = _read_given_checkpoint(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the model's initial weights follow the seed
    datamodule = instantiate(cfg.data, _convert_="all")
    if cfg.train:
        model = build_module(cfg, datamodule)
        if ckpt is not None and (problem := state_dict_problem(model.state_dict(), ckpt["state_dict"])):
            raise CheckpointError(f"{cfg.ckpt_path}: cannot resume this run from it: {problem}")
    else:
        model = checkpoint_module(ckpt, cfg.ckpt_path)
    callbacks = _instantiate_all(cfg.get("callbacks")) + _instantiate_all(cfg.get("schedule"))
    for callback in callbacks:
        if hasattr(callback, "check_module"):  # settings that must fit the model (a keep_prob schedule)
            callback.check_module(model)
    loggers = _instantiate_all(cfg.get("logger"))
    launch_ranks_as_this_job()  # before the Trainer: its launcher restarts this job for the other ranks
    trainer = make_trainer(cfg, callbacks=callbacks, logger=loggers or False, plugins=_plugins(cfg))
    if trainer.global_rank > 0:  # the other ranks compute; rank zero alone reports
        logging.getLogger("maist").setLevel(logging.WARNING)
    elif cfg.get("print_config", True):
        log.info("config (all of it: %s):\n%s", out / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if trainer.is_global_zero:
        remove_stale_temporaries(out)
    try:
        return _fit_and_test(cfg, trainer, model, datamodule, callbacks, loggers, out)
    except BaseException:
        end_launched_ranks(trainer)  # a rank that failed, or that lost another, leaves none behind
        raise


def _fit_and_test(cfg: DictConfig, trainer: L.Trainer, model, datamodule, callbacks: list, loggers: list, out: Path):
    datamodule.setup("fit")  # decoded once: the first process writes the cache, the others load it
    task = task_of(cfg.task_name, cfg.train)
    metrics: dict = {"task_name": task, "output_dir": str(out)}
    if cfg.train:
        model.record_training_images(datamodule.ink_ratio, datamodule.stroke_width)
        started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
        metrics["train_seconds"] = round(time.perf_counter() - started, 1)
        metrics["steps"] = trainer.global_step
        if "val/acc_best" in trainer.callback_metrics:
            metrics["val/acc_best"] = float(trainer.callback_metrics["val/acc_best"])
        guard = next((c for c in callbacks if hasattr(c, "reason")), None)
        if guard is not None and guard.reason:
            metrics["stopped"] = guard.reason

    if cfg.test:
        tested = _test_checkpoint(cfg, trainer, callbacks)
        metrics["tested_checkpoint"] = str(tested) if tested else "final weights (no checkpoint callback saved them)"
        results = trainer.test(
            model, datamodule=datamodule, ckpt_path=tested if cfg.train else None, verbose=False, weights_only=True
        )
        tested_module = trainer.lightning_module
        metrics.update({k: float(v) for k, v in results[0].items() if not k.startswith(PER_CLASS)})
        metrics["test/acc_per_class"] = getattr(tested_module, "per_class_accuracy", {})
        if cfg.get("analyse_test", True) and trainer.is_global_zero:
            # rank zero predicts the whole test set itself: every image exactly once
            metrics["analysis"] = analyse_test(
                tested_module, datamodule, out, loggers, metrics=metrics, step=trainer.global_step
            )
    if trainer.is_global_zero:  # one writer per output
        write_atomic(out / METRICS_FILE, json.dumps(metrics, indent=2, ensure_ascii=False).encode())
        if cfg.train:  # an evaluation is not a trial of the sweep tables
            log_summary(loggers, cfg, metrics)
        _report(metrics, loggers, out)
    return metrics


def _plugins(cfg: DictConfig) -> list:
    """The trainer's plugins; under SLURM, Lightning's own requeue is off: submitit requeues the job
    (``hydra/launcher=slurm``) and the run resumes from its ``last.ckpt``."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    plugins = [instantiate(p) for p in cfg.trainer.get("plugins") or []]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def _resume_after_requeue(cfg: DictConfig, out: Path) -> None:
    """A SLURM job requeued after preemption starts again in the same folder: resume it from its
    own ``last.ckpt`` (unless ``ckpt_path`` names another checkpoint)."""
    last = out / "checkpoints" / "last.ckpt"
    if cfg.train and not cfg.ckpt_path and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 and last.is_file():
        log.info("requeued (SLURM_RESTART_COUNT=%s): resuming from %s", os.environ["SLURM_RESTART_COUNT"], last)
        with open_dict(cfg):
            cfg.ckpt_path = str(last)


def _test_checkpoint(cfg: DictConfig, trainer: L.Trainer, callbacks: list) -> str | None:
    """The file whose weights ``test`` evaluates: the checkpoint given with ``train=false``, else
    ``best.ckpt`` or ``last.ckpt`` as ``test_ckpt`` says (``None``: nothing was saved)."""
    if not cfg.train:
        return str(cfg.ckpt_path)
    which = cfg.get("test_ckpt", "best")
    last = next((c.path for c in callbacks if isinstance(c, LastCheckpoint)), None)
    if which == "best":
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best:
            return best
        if trainer.checkpoint_callback is not None:
            log.warning("no best checkpoint (this run has no validation set): testing the last one")
    if last is not None and last.is_file():
        return str(last)
    log.warning("no last.ckpt (callbacks.last_checkpoint is off): testing the final weights, which are not saved")
    return None


def _report(metrics: dict, loggers: list, out: Path) -> None:
    lines = [f"run folder: {out}"]
    if "test/acc" in metrics:
        lines.append(
            f"test/acc = {metrics['test/acc']:.4f}   test/acc_top5 = {metrics['test/acc_top5']:.4f}"
            f"   test/loss = {metrics['test/loss']:.4f}"
        )
    if "stopped" in metrics:
        lines.append(f"stopped early: {metrics['stopped']}")
    for lg in loggers:
        if type(lg).__name__ == "TensorBoardLogger":
            lines.append(f"TensorBoard: tensorboard --logdir {lg.log_dir}")
    print("\n".join(lines), flush=True)


def run_or_report(cfg: DictConfig) -> dict:
    """``run``; in a multirun sweep a failing job is logged and recorded, not raised, so the
    other jobs go on (the sweep summary lists it)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return run(cfg)
    try:
        return run(cfg)
    except Exception as err:
        log.exception("job failed: %s", err)
        metrics = {"task_name": cfg.task_name, "failed": f"{type(err).__name__}: {err}"}
        write_atomic(Path(cfg.paths.output_dir) / METRICS_FILE, json.dumps(metrics, indent=2).encode())
        return metrics


def optimized_value(cfg: DictConfig, metrics: dict) -> float:
    """The metric a sweeper optimises (``optimized_metric``); NaN, with a warning naming it, when
    the run has none (a failed job, or a run without validation such as ``best_accuracy``)."""
    name = cfg.get("optimized_metric")
    if not name:
        return math.nan
    if name not in metrics:
        log.warning(
            "optimized_metric=%s: this run has no %s (got %s); the sweeper gets NaN",
            name,
            name,
            ", ".join(k for k in metrics if "/" in k) or "no metrics",
        )
        return math.nan
    return float(metrics[name])
