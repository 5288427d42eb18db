"""Train and/or evaluate one configured run; the logic behind train.py."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from maist.analysis import analyse_test
from maist.data.etl import write_atomic
from maist.module import MaistModule

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def _instantiate_all(group: DictConfig | None) -> list:
    return [instantiate(c, _convert_="all") for c in (group or {}).values() if c is not None and "_target_" in c]


def _checkpoint_data_spec(ckpt_path: str) -> dict:
    """The class set and preprocessing a checkpoint was trained with."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint. Pass ckpt_path=…/checkpoints/best.ckpt or last.ckpt.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        hp = ckpt["hyper_parameters"]
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable MAIST checkpoint ({err}).") from err
    return {"class_set": hp["class_set"], "preprocess": dict(hp["preprocess"])}


def _align_data_with_checkpoint(cfg: DictConfig) -> None:
    """Evaluating a checkpoint: use the class set and preprocessing it was trained with."""
    spec = _checkpoint_data_spec(cfg.ckpt_path)
    pre = spec["preprocess"]
    with open_dict(cfg):
        cfg.data.class_set = spec["class_set"]
        cfg.data.image_size = pre.pop("image_size")
        cfg.data.preprocess = pre
    log.info("evaluating %s with its own class set %s and preprocessing %s", cfg.ckpt_path, spec["class_set"], pre)


def build_module(cfg: DictConfig, datamodule) -> MaistModule:
    return instantiate(cfg.model, classes=datamodule.classes, class_set=datamodule.hparams.class_set,
                       preprocess=datamodule.preprocess.as_dict(), ink_ratio=datamodule.ink_ratio,
                       _recursive_=False)


def run(cfg: DictConfig) -> dict:
    """Fit and/or test as configured; writes metrics.json into the run folder and returns it."""
    out = Path(cfg.paths.output_dir)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    L.seed_everything(cfg.seed, workers=True)
    if not cfg.train:
        if not cfg.ckpt_path:
            raise ValueError("train=false evaluates a checkpoint: pass ckpt_path=…/checkpoints/best.ckpt")
        _align_data_with_checkpoint(cfg)

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    callbacks = _instantiate_all(cfg.get("callbacks")) + _instantiate_all(cfg.get("schedule"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    metrics: dict = {"task_name": cfg.task_name, "output_dir": str(out)}
    if cfg.train:
        model = build_module(cfg, datamodule)
        started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        metrics["train_seconds"] = round(time.perf_counter() - started, 1)
        metrics["steps"] = trainer.global_step
        if "val/acc_best" in trainer.callback_metrics:
            metrics["val/acc_best"] = float(trainer.callback_metrics["val/acc_best"])
        guard = next((c for c in callbacks if hasattr(c, "reason")), None)
        if guard is not None and guard.reason:
            metrics["stopped"] = guard.reason
    else:
        model = MaistModule.load_from_checkpoint(cfg.ckpt_path, map_location="cpu")

    if cfg.test:
        ckpt = _test_checkpoint(cfg, trainer)
        metrics["tested_checkpoint"] = ckpt or "final weights"
        results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        tested = trainer.lightning_module
        metrics.update({k: float(v) for k, v in results[0].items() if not k.startswith("test/acc_class/")})
        metrics["test/acc_per_class"] = getattr(tested, "per_class_accuracy", {})
        if cfg.get("analyse_test", True):
            metrics["analysis"] = analyse_test(tested, datamodule, out, loggers, metrics=metrics,
                                               step=trainer.global_step)
    write_atomic(out / METRICS_FILE, json.dumps(metrics, indent=2, ensure_ascii=False).encode())
    _report(metrics, loggers, out)
    return metrics


def _test_checkpoint(cfg: DictConfig, trainer: L.Trainer) -> str | None:
    if not cfg.train:
        return None  # the loaded checkpoint's weights are already in the model
    if cfg.get("test_ckpt", "best") == "best":
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best:
            return best
        log.warning("no best checkpoint (no validation ran): testing the final weights")
    return None


def _report(metrics: dict, loggers: list, out: Path) -> None:
    lines = [f"run folder: {out}"]
    if "test/acc" in metrics:
        lines.append(f"test/acc = {metrics['test/acc']:.4f}   test/acc_top5 = {metrics['test/acc_top5']:.4f}"
                     f"   test/loss = {metrics['test/loss']:.4f}")
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
    value = metrics.get(cfg.get("optimized_metric") or "", math.nan)
    return float(value)
