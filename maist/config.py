"""Where the Hydra configs live, what they take from the code, and the resolvers they use.

The configs are the top-level ``conf/`` folder of a checkout; installed (``pip install .``) the
same files are the package ``maist.conf`` (pyproject.toml maps one onto the other), so an
installed wheel trains without a checkout.

The data config's keys and defaults are the code's own: :func:`register_configs` stores
``data/defaults``, built from :class:`~maist.data.datamodule.MaistDataModule`'s signature and
:class:`~maist.data.preprocess.Preprocess`'s fields, which ``conf/data/etl.yaml`` extends. So a
data module or a preprocessing built in Python with no arguments is what ``train.py`` builds.
"""

import inspect
from dataclasses import asdict
from importlib.resources import files
from pathlib import Path

from omegaconf import OmegaConf

from maist.data.kana import class_set

CONFIG_DIR = Path(str(files("maist.conf")))


def signature_defaults(cls) -> dict:
    """The keyword defaults of ``cls.__init__`` (every parameter has one)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


def data_defaults() -> dict:
    """The data config as the code defines it: MaistDataModule's arguments, with the preprocessing
    spelled out (Preprocess's fields but ``image_size``, which is the data module's own)."""
    from maist.data.datamodule import MaistDataModule
    from maist.data.preprocess import Preprocess

    node = {"_target_": f"{MaistDataModule.__module__}.{MaistDataModule.__qualname__}"}
    node.update(signature_defaults(MaistDataModule))
    node["preprocess"] = {k: v for k, v in asdict(Preprocess()).items() if k != "image_size"}
    return node


EVAL_TASK = "eval"  # the task of a run that evaluates a checkpoint (train=false): its own name and folder


def task_of(task_name: str, train: bool) -> str:
    """A run's task: its ``task_name`` when it trains, else ``eval``."""
    return task_name if train else EVAL_TASK


def register_configs() -> None:
    """Store ``data/defaults`` and register the resolvers ``${num_classes:hiragana75}`` (→ 75) and
    ``${task:${task_name},${train}}`` (:func:`task_of`); once per process."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("num_classes"):
        OmegaConf.register_new_resolver("num_classes", lambda name: class_set(name).num_classes)
        OmegaConf.register_new_resolver("task", task_of)
        ConfigStore.instance().store(group="data", name="defaults", node=data_defaults())
