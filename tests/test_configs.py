"""Every config composes and builds: each experiment, debug, trainer, logger, launcher and search
config gives a data module, a model and a trainer (nothing is trained or decoded)."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from maist.config import CONFIG_DIR
from maist.data.kana import class_set
from maist.module import MaistModule
from maist.run import _instantiate_all, _plugins
from tests.helpers import compose_cfg

OUT = "paths.output_dir=/tmp/maist-config-test"  # where a built trainer and loggers would write


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def build(cfg):
    """The data module, model and trainer of ``cfg`` (GPU configs are built on the CPU)."""
    datamodule = instantiate(cfg.data, _convert_="all")
    classes = list(class_set(cfg.data.class_set).classes)
    model = instantiate(
        cfg.model,
        classes=classes,
        class_set=cfg.data.class_set,
        preprocess=datamodule.preprocess.as_dict(),
        _recursive_=False,
    )
    callbacks = _instantiate_all(cfg.get("callbacks")) + _instantiate_all(cfg.get("schedule"))
    overrides = {"accelerator": "cpu", "sync_batchnorm": False} if cfg.trainer.accelerator == "gpu" else {}
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=_instantiate_all(cfg.get("logger")) or False,
        plugins=_plugins(cfg),
        **overrides,
    )
    return datamodule, model, trainer


@pytest.mark.parametrize("experiment", names("experiment"))
def test_every_experiment_builds(experiment):
    cfg = compose_cfg(OUT, f"experiment={experiment}")
    datamodule, model, trainer = build(cfg)
    assert isinstance(model, MaistModule)
    assert model.net(datamodule.preprocess(__import__("torch").zeros(1, 127, 128))[:, None]).shape == (
        1,
        class_set(cfg.data.class_set).num_classes,
    )
    assert trainer.max_steps == cfg.trainer.max_steps > 0


@pytest.mark.parametrize("group", ["trainer", "logger", "model", "schedule", "callbacks", "debug"])
def test_every_config_of_a_group_builds(group):
    for name in names(group):
        cfg = compose_cfg(OUT, f"{group}={name}")
        datamodule, model, trainer = build(cfg)
        if group == "trainer":
            assert (trainer.world_size if cfg.trainer.get("strategy") else 1) == cfg.trainer.devices
        if group == "logger":
            assert len(trainer.loggers) == len(cfg.logger)


def test_the_search_config_composes_with_its_sweeper():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the `search` extra is not installed")
    cfg = compose_cfg(OUT, "hparams_search=cnn_optuna", hydra=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.optimized_metric == "val/acc_best"
    build(cfg)


def test_the_experiments_restate_the_articles_settings():
    cfg = compose_cfg(OUT, "experiment=seed_stepped_dropout")
    assert (cfg.data.batch_size, cfg.data.image_size, cfg.data.class_set) == (50, 28, "hiragana71")
    assert (cfg.data.sampler, cfg.data.split_by, cfg.model.loss_reduction) == ("with_replacement", "random", "sum")
    assert cfg.trainer.max_steps == 20000


def test_python_objects_built_with_no_arguments_are_what_train_py_builds():
    """One set of defaults: the data config's keys and values are MaistDataModule's and
    Preprocess's own (maist.config), so a data module, a dataset or a preprocessing made in Python
    sees the images a train.py run sees."""
    from maist.data.datamodule import MaistDataModule
    from maist.data.preprocess import Preprocess

    configured = instantiate(compose_cfg(OUT).data, _convert_="all")
    plain = MaistDataModule()
    assert dict(plain.hparams) == dict(configured.hparams)
    assert plain.preprocess == configured.preprocess == Preprocess(image_size=configured.hparams.image_size)
    # the values a reader of the README expects (the voiced-safe crop of tests/test_voiced.py)
    assert (Preprocess().threshold, Preprocess().crop, Preprocess().despeckle, Preprocess().margin) == (
        0.35,
        True,
        3,
        0.08,
    )
