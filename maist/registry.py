"""The parts of a model that MAIST builds from settings, by name: the one list of what a config or a
checkpoint may construct.

A model's network, augmentation, optimizer and scheduler are settings with a ``_target_``
(``{"_target_": "maist.models.DeepMnistCNN", "hidden": 1024}``). They come from the user's config
when training, and from a checkpoint's hyper-parameters when it is read back, and a checkpoint is
data that anybody may hand over. So these settings are never given to Hydra's ``instantiate``
(which imports any attribute path and resolves ``${…}`` interpolations): :func:`build` looks the
``_target_`` up, whole, in :data:`PARTS` and calls that class with plain values only (numbers,
strings, booleans, None, lists and dicts of them, no ``${`` in any string, no ``_target_`` inside).
To make a class of your own buildable, add it here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from maist.augment import BatchAffine
from maist.errors import ConfigError
from maist.models import NETS

OPTIMIZERS = {f"torch.optim.{c.__name__}": c for c in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)}
SCHEDULERS = {
    f"torch.optim.lr_scheduler.{c.__name__}": c
    for c in (
        torch.optim.lr_scheduler.OneCycleLR,
        torch.optim.lr_scheduler.StepLR,
        torch.optim.lr_scheduler.MultiStepLR,
        torch.optim.lr_scheduler.CosineAnnealingLR,
    )
}
# Each part of a model, and the classes it may be.
PARTS: dict[str, dict[str, type]] = {
    "net": {f"maist.models.{name}": cls for name, cls in NETS.items()},
    "augment": {"maist.augment.BatchAffine": BatchAffine},
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
}
PLAIN = (str, int, float, bool, type(None))


def plain_problem(value, where: str) -> str | None:
    """What makes ``value`` more than plain data, or None: anything but numbers, strings, booleans,
    None and lists or str-keyed dicts of them; a string holding ``${`` (an interpolation); a
    ``_target_`` key (something to construct)."""
    if isinstance(value, str):
        return f"{where} holds an interpolation ({value[:60]!r})" if "${" in value else None
    if isinstance(value, PLAIN):
        return None
    if isinstance(value, (list, tuple)):
        return next((p for i, v in enumerate(value) if (p := plain_problem(v, f"{where}[{i}]"))), None)
    if isinstance(value, Mapping):
        for key, v in value.items():
            if not isinstance(key, str) or "${" in key:
                return f"{where} has the key {key!r}"
            if key == "_target_":
                return f"{where} asks to construct {v!r}"
            if problem := plain_problem(v, f"{where}.{key}"):
                return problem
        return None
    return f"{where} holds a {type(value).__name__}, not a plain value"


def check_spec(spec, part: str, where: str | None = None) -> type:
    """The class a part's settings name, after checking them (see the module doc); a
    :class:`ConfigError` naming the setting otherwise."""
    where = where or part
    allowed = PARTS[part]
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: must be settings with a _target_, not {type(spec).__name__}")
    target = spec.get("_target_")
    cls = allowed.get(target) if isinstance(target, str) else None
    if cls is None:
        raise ConfigError(f"{where}._target_={target!r}: MAIST builds only {', '.join(allowed)} here")
    if problem := plain_problem(settings(spec, part), where):
        raise ConfigError(problem)
    return cls


def settings(spec: Mapping, part: str) -> dict:
    """The keywords a part's class is called with: its settings but ``_target_`` (and a
    scheduler's ``interval``, which says when MaistModule steps it)."""
    skip = ("_target_", "interval") if part == "scheduler" else ("_target_",)
    return {k: v for k, v in spec.items() if k not in skip}


def build(spec, part: str, where: str | None = None, **extra):
    """Construct ``part`` (``net``, ``augment``, ``optimizer``, ``scheduler``) from its settings,
    with ``extra`` keywords (an optimizer's ``params``, a scheduler's ``optimizer``); ``where``
    names the settings in errors (``model.net``)."""
    return check_spec(spec, part, where)(**settings(spec, part), **extra)
