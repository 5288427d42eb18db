"""What a run tells its trackers (TensorBoard, MLflow, Weights & Biases, CSV): one path for figures,
and one for the settings that define the run next to its final results (TensorBoard's HParams
dashboard, MLflow's parameters, W&B's config and summary), so a sweep reads as one table."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import Container, DictConfig, OmegaConf

log = logging.getLogger(__name__)

# The results a run is compared by, logged with its settings (as final/<name>).
SUMMARY_METRICS = ("val/acc_best", "test/acc", "test/acc_top5", "test/loss", "train_seconds")
# Settings every run reports, whether or not it overrode them …
KEY_SETTINGS = ("seed", "data.batch_size", "model.optimizer.lr", "trainer.max_steps")
# … and overrides that do not change what a run computes.
NOT_SETTINGS = (
    "hydra.",
    "hydra/",
    "paths.",
    "data.root",
    "data.test_root",
    "data.cache_dir",
    "ckpt_path",
    "logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "torch_threads",
    "~",
    "+callbacks.",
)


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_settings(cfg: DictConfig) -> dict[str, str | float | int | bool]:
    """The settings that define a run, flat: the config groups chosen (model, schedule, …), the
    key settings, and every command-line override that changes what it computes."""
    from hydra.core.hydra_config import HydraConfig

    out: dict = {}
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        out.update({g: choices[g] for g in ("experiment", "model", "schedule", "trainer") if choices.get(g)})
    for key in KEY_SETTINGS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            out[key] = value
    for override in _overrides():
        key, sep, value = override.partition("=")
        if sep and not key.startswith(NOT_SETTINGS):
            resolved = OmegaConf.select(cfg, key.lstrip("+"), default=None)
            out[key.lstrip("+")] = value if resolved is None or isinstance(resolved, Container) else resolved
    return {k: v if isinstance(v, (int, float, bool, str)) else str(v) for k, v in out.items()}


def run_label(default: str = "run") -> str:
    """A short name that says what the run is: its defining overrides (else ``default``)."""
    parts = [o for o in _overrides() if not o.partition("=")[0].startswith(NOT_SETTINGS)]
    return ",".join(parts) or default


def log_summary(loggers: list, cfg: DictConfig, metrics: dict) -> None:
    """Each tracker gets the run's settings next to its final metrics (call it once, at the end: it
    ends the W&B run, so that a sweep's next job gets its own)."""
    settings = run_settings(cfg)
    final = {f"final/{k}": float(metrics[k]) for k in SUMMARY_METRICS if isinstance(metrics.get(k), (int, float))}
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(settings, final)  # the HParams dashboard: one row per run
        else:
            lg.log_hyperparams(settings)
            if final:
                lg.log_metrics(final, step=int(metrics.get("steps", 0)))
        lg.save()
        if isinstance(lg, WandbLogger):
            lg.experiment.finish()


def log_image(loggers: list, tag: str, image: np.ndarray, step: int) -> None:
    """A figure (H×W grey or H×W×3 uint8) to every tracker that keeps pictures: TensorBoard's
    images, MLflow's artifacts (``<tag>/step<step>.png``), W&B's media (``<tag>``); CSV keeps none."""
    for lg in loggers or []:
        if isinstance(lg, MLFlowLogger):
            lg.experiment.log_image(lg.run_id, np.ascontiguousarray(image), f"{tag}/step{step:06d}.png")
            continue
        if isinstance(lg, WandbLogger):
            lg.log_image(tag, [image], step=step)
            continue
        experiment = getattr(lg, "experiment", None)
        if hasattr(experiment, "add_image"):  # TensorBoard's SummaryWriter
            experiment.add_image(tag, image, step, dataformats="HW" if image.ndim == 2 else "HWC")


def flush(loggers: list) -> None:
    """Write what the trackers hold (TensorBoard buffers its events)."""
    for lg in loggers or []:
        experiment = None if isinstance(lg, MLFlowLogger) else getattr(lg, "experiment", None)
        if hasattr(experiment, "flush"):
            experiment.flush()


class MlflowLogger(MLFlowLogger):
    """Lightning's MLflow logger with MAIST's defaults: a local store that ``mlflow ui`` opens as it
    is (the SQLite database ``outputs/mlflow.db``, figures under ``outputs/mlartifacts/<experiment>``)
    unless ``tracking_uri`` names your server, and a run name that says what the run is.

    Args:
        experiment_name: the MLflow experiment (default: the run's ``task_name``).
        tracking_uri: ``null`` for the local store, or a server's URI.
        run_name: ``null`` for the run's defining overrides.
        **kwargs: passed to Lightning's ``MLFlowLogger``.
    """

    LOCAL_STORE = Path("outputs") / "mlflow.db"
    LOCAL_ARTIFACTS = Path("outputs") / "mlartifacts"

    def __init__(
        self, experiment_name: str = "maist", tracking_uri: str | None = None, run_name: str | None = None, **kwargs
    ):
        if tracking_uri is None:
            self.LOCAL_STORE.parent.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{self.LOCAL_STORE.resolve()}"
            kwargs.setdefault("artifact_location", (self.LOCAL_ARTIFACTS / experiment_name).resolve().as_uri())
        super().__init__(
            experiment_name=experiment_name,
            tracking_uri=tracking_uri,
            run_name=run_name or run_label(experiment_name),
            **kwargs,
        )


class WandbRunLogger(WandbLogger):
    """Lightning's Weights & Biases logger with MAIST's defaults: a run name that says what the run
    is, and one W&B run per MAIST run: ``log_summary`` ends it, and a run left open by a sweep's job
    that failed before then ends here, marked failed (else Lightning would log into it).

    Args:
        project: the W&B project.
        name: ``null`` for the run's defining overrides.
        **kwargs: passed to Lightning's ``WandbLogger`` (``save_dir``, ``offline``, ``entity``, …).
    """

    def __init__(self, project: str = "maist", name: str | None = None, **kwargs):
        import wandb

        if wandb.run is not None:
            wandb.run.finish(exit_code=1)
        super().__init__(project=project, name=name or run_label(project), **kwargs)
