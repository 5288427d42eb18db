"""The one place that reads checkpoints: every entry point (evaluation, resuming, predict, the
page, export, visualize) comes through here.

A checkpoint is data, never code. It is read with ``torch.load(weights_only=True)``, which
unpickles only tensors and plain containers (a file that asks to call anything is refused). Its
hyper-parameters must be plain values (numbers, strings, booleans, None, lists and dicts of
them): no ``${…}`` interpolation anywhere, no ``_target_`` but the ``_target_`` of each part a
model is built from (net, augmentation, optimizer, scheduler), which must be one of the classes
:mod:`maist.registry` names, compared whole; and the model is rebuilt by that registry, never by
Hydra. Whatever is wrong with a file, the error is one :class:`~maist.errors.CheckpointError`
whose one-line message names it and says what to do.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from maist import registry
from maist.data.preprocess import as_recorded
from maist.errors import CheckpointError, ConfigError, first_line

# What a MAIST checkpoint's hyper-parameters must hold to rebuild the model and its inputs.
REQUIRED_HPARAMS = ("net", "optimizer", "classes", "class_set", "preprocess")
MAX_BYTES = 2 * 1024**3  # a MAIST model is a few MB; refuse to read anything this large
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
_PICKLE_MAGIC = b"\x80"  # torch.save's legacy format (a pickle)
_HINT = "pass ckpt_path=…/checkpoints/best.ckpt or last.ckpt of a MAIST run"


def _check_file(p: Path) -> None:
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint ({_HINT})")
    if not p.is_file():
        raise CheckpointError(f"{p}: not a file ({_HINT})")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"{p}: the file is empty (an interrupted copy?); {_HINT}")
    if size > MAX_BYTES:
        raise CheckpointError(f"{p}: {size / 1e9:.1f} GB is far larger than any MAIST checkpoint; not read")
    with open(p, "rb") as f:
        head = f.read(4)
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        kind = (
            "a text file" if head.isascii() and all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "unknown bytes"
        )
        raise CheckpointError(f"{p}: not a PyTorch checkpoint (it starts with {head!r}: {kind}); {_HINT}")


def _unsafe_global(err: BaseException) -> str | None:
    """The global a refused pickle asked for (``posix.system``), if that is why loading failed."""
    m = re.search(r"(?:Unsupported global|GLOBAL|global)[:\s]+([\w.]+)", str(err))
    if m:
        return m.group(1)
    return "a function call" if "Weights only load failed" in str(err) else None


def _settings_problem(hp: dict) -> str | None:
    """What makes a checkpoint's hyper-parameters more than settings MAIST builds from, or None."""
    for key, value in hp.items():
        if key in registry.PARTS:
            if value is None and key in ("augment", "scheduler"):
                continue
            try:
                registry.check_spec(value, key)
            except ConfigError as err:
                return str(err)
        elif problem := registry.plain_problem(value, key):
            return problem
    return None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A MAIST checkpoint's contents (tensors and plain values only), checked to rebuild safely.

    Raises :class:`CheckpointError` for a missing, empty, truncated, text or foreign file, a bare
    ``state_dict``, another project's Lightning checkpoint, and one that would run code.
    """
    if not str(path):
        raise CheckpointError(f"no checkpoint given: {_HINT}")
    p = Path(path).expanduser()
    _check_file(p)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        what = _unsafe_global(err)
        if what:
            raise CheckpointError(
                f"{p}: refused: loading it would run code ({what}); a MAIST checkpoint holds "
                "only weights and settings. Use a checkpoint you trained yourself"
            ) from None
        raise CheckpointError(f"{p}: damaged or not a checkpoint ({first_line(err)}); {_HINT}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{p}: truncated or damaged ({first_line(err)}): the save was interrupted or the "
            f"copy is incomplete; {_HINT}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{p}: holds a {type(ckpt).__name__}, not a MAIST checkpoint; {_HINT}")
    if "state_dict" not in ckpt:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise CheckpointError(
                f"{p}: bare weights (a state_dict) without the model's settings; MAIST needs the "
                "checkpoint that training wrote (checkpoints/best.ckpt or last.ckpt)"
            )
        raise CheckpointError(f"{p}: not a MAIST checkpoint (no weights); {_HINT}")
    hp = ckpt.get("hyper_parameters")
    missing = [k for k in REQUIRED_HPARAMS if not isinstance(hp, dict) or k not in hp]
    if missing:
        origin = (
            "a Lightning checkpoint of another project"
            if "pytorch-lightning_version" in ckpt
            else "not a MAIST checkpoint"
        )
        raise CheckpointError(f"{p}: {origin} (no MAIST model settings: {', '.join(missing)}); {_HINT}")
    if problem := _settings_problem(hp):
        raise CheckpointError(
            f"{p}: refused: {problem}; a MAIST checkpoint holds plain settings of the classes MAIST "
            "names (maist.registry) and cannot make MAIST construct or call anything else"
        )
    return ckpt


def state_dict_problem(expected: dict, given: dict) -> str | None:
    """How the tensors ``given`` (a checkpoint's) fail to fit a model whose state_dict is
    ``expected``, naming the first tensor that does not fit; None when every one fits."""
    missing = [k for k in expected if k not in given]
    if missing:
        return f"the model's {missing[0]} is not in the file ({len(missing)} tensors missing)"
    extra = [k for k in given if k not in expected]
    if extra:
        return f"the file's {extra[0]} is not in the model ({len(extra)} tensors more)"
    for key, tensor in given.items():
        if not isinstance(tensor, torch.Tensor):
            return f"{key} is a {type(tensor).__name__}, not a tensor"
        if tuple(tensor.shape) != tuple(expected[key].shape):
            return (
                f"{key} has shape {tuple(tensor.shape)} in the file, but the model its settings describe "
                f"has {tuple(expected[key].shape)}"
            )
    return None


def build_module(ckpt: dict, path: str | os.PathLike = "checkpoint"):
    """The :class:`~maist.module.MaistModule` of a checkpoint read by :func:`read_checkpoint`,
    with its weights, on CPU, in eval mode."""
    from maist.module import MaistModule

    try:
        module = MaistModule(**ckpt["hyper_parameters"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: its model settings cannot be built ({err})") from None
    except Exception as err:
        raise CheckpointError(f"{path}: cannot rebuild the model ({first_line(err)})") from None
    if problem := state_dict_problem(module.state_dict(), ckpt["state_dict"]):
        raise CheckpointError(f"{path}: its weights do not fit its model: {problem}")
    module.load_state_dict(ckpt["state_dict"], strict=True)
    return module.eval()


def load_module(path: str | os.PathLike):
    """Read ``path`` safely and rebuild its model: ``(module, checkpoint dict)``."""
    ckpt = read_checkpoint(path)
    return build_module(ckpt, path), ckpt


def data_spec(ckpt: dict) -> dict:
    """The class set, image size and preprocessing a checkpoint was trained with."""
    pre = as_recorded(ckpt["hyper_parameters"]["preprocess"])
    return {"class_set": ckpt["hyper_parameters"]["class_set"], "image_size": pre.pop("image_size"), "preprocess": pre}


def check_resumable(path: str | os.PathLike, model_cfg: dict, class_set: str) -> dict:
    """Read ``path`` for resuming a run configured with ``model_cfg`` (the ``model`` config group)
    and ``class_set``: the network and the classes must be the same as when it was saved."""
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    saved, wanted = hp["net"], dict(model_cfg.get("net") or {})
    if saved.get("_target_") != wanted.get("_target_"):
        raise CheckpointError(
            f"{path}: a checkpoint of {saved.get('_target_')}, but this run configures "
            f"{wanted.get('_target_')}: resume with the model it was trained with, or drop ckpt_path"
        )
    diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} saved, {wanted.get(k)!r} now" for k in diff[:3])
        raise CheckpointError(f"{path}: saved with another network ({shown}): resume with the same model settings")
    if hp["class_set"] != class_set:
        raise CheckpointError(
            f"{path}: trained on class set {hp['class_set']!r}, this run uses {class_set!r}: "
            "resume with the same data.class_set"
        )
    if "loops" not in ckpt or "optimizer_states" not in ckpt:
        raise CheckpointError(
            f"{path}: holds weights only (no optimizer or loop state), so training cannot resume "
            "from it; evaluate it with train=false, or start a new run"
        )
    return ckpt
