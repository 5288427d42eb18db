"""Where the Hydra configs live (inside the package, so an installed wheel trains without a source
checkout), and the OmegaConf resolvers they use."""

from pathlib import Path

from omegaconf import OmegaConf

from maist.data.kana import class_set

CONFIG_DIR = Path(__file__).with_name("conf")


def register_resolvers() -> None:
    """``${num_classes:hiragana75}`` → 75."""
    if not OmegaConf.has_resolver("num_classes"):
        OmegaConf.register_new_resolver("num_classes", lambda name: class_set(name).num_classes)
