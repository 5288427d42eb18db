"""Where the Hydra configs live, and the OmegaConf resolvers they use.

The configs are the top-level ``conf/`` folder of a checkout; installed (``pip install .``) the
same files are the package ``maist.conf`` (pyproject.toml maps one onto the other), so an
installed wheel trains without a checkout."""

from importlib.resources import files
from pathlib import Path

from omegaconf import OmegaConf

from maist.data.kana import class_set

CONFIG_DIR = Path(str(files("maist.conf")))


def register_resolvers() -> None:
    """``${num_classes:hiragana75}`` → 75."""
    if not OmegaConf.has_resolver("num_classes"):
        OmegaConf.register_new_resolver("num_classes", lambda name: class_set(name).num_classes)
