"""OmegaConf resolvers that the Hydra configs use."""

from omegaconf import OmegaConf

from maist.data.kana import class_set


def register_resolvers() -> None:
    """``${num_classes:hiragana75}`` → 75."""
    if not OmegaConf.has_resolver("num_classes"):
        OmegaConf.register_new_resolver("num_classes", lambda name: class_set(name).num_classes)
