"""Top-5 kana for your own pictures, and the one inference path everything else reuses.

    python -m maist.predict ckpt_path=CKPT inputs=[a.png,b.jpg,folder/]          # a table
    python -m maist.predict ckpt_path=CKPT inputs=[a.png] format=json            # JSON lines
    python -m maist.predict ckpt_path=CKPT inputs=[a.png] k=3 ink_ratio=0.95     # options
    python -m maist.predict ckpt_path=CKPT inputs=[a.png] stroke_width=0         # strokes as drawn

:class:`Predictor` (``from_checkpoint``, ``top_k``, ``features``) is shared by this command,
``maist.visualize``, ``maist.export`` (its check) and the web page (``maist.serve``). Pictures
go through :mod:`maist.images` and then the checkpoint's own training ``Preprocess``; when the
checkpoint records its training images' stroke width (the ``stroke_width`` hparam), each
picture's strokes are first made as wide (:func:`maist.images.match_stroke_width`).

A missing or unreadable checkpoint, or an unreadable picture, is one line on stderr naming the
file, and exit code 2 (the other pictures are still predicted).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from maist import inference
from maist.checkpoint import load_module
from maist.cli import EXIT_USAGE, cli, float_option, int_option, parse_cli
from maist.data.preprocess import Preprocess, as_recorded
from maist.errors import CheckpointError, UsageError
from maist.images import INK_FRAME_RATIO, ImageError, decode_image, list_images, load_image, to_model_input
from maist.text import printable

__all__ = ["Predictor", "predictor_from_cli", "main"]


class Predictor:
    """A trained network with its class list and its training preprocessing, in eval mode on CPU.

    Images given to :meth:`top_k` / :meth:`prepare` may be a path, encoded bytes (PNG, JPEG…),
    a PIL image, or a 2-D array (a grey picture as :func:`maist.images.load_image` returns):
    these are normalised (:func:`maist.images.to_model_input`). A 4-D tensor or array
    (N, 1, S, S) is taken as already-preprocessed network input.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        classes: Sequence[str],
        preprocess: dict,
        ink_ratio: float = INK_FRAME_RATIO,
        source: str = "model",
        stroke_width: float | None = None,
        recorded_stroke_width: float | None = None,
    ):
        self.net = net.eval()
        self.preprocess_dict = as_recorded(preprocess)
        self.preprocess = Preprocess(**self.preprocess_dict)
        self.image_size = self.preprocess.image_size
        self.ink_ratio = float(ink_ratio)
        # the width pictures' strokes are matched to (pixels at the input size); None or 0: as drawn
        self.stroke_width = float(stroke_width) if stroke_width else None
        self.recorded_stroke_width = float(recorded_stroke_width) if recorded_stroke_width else None
        self.source = source
        self.classes = list(classes)
        n_out = self._num_outputs()
        if len(self.classes) < n_out:  # a class list shorter than the outputs: name the rest
            self.classes += [f"#{i}" for i in range(len(self.classes), n_out)]
        self._lock = threading.Lock()  # one forward at a time (the web server is threaded)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, ink_ratio: float | None = None, stroke_width: float | None = None
    ) -> Predictor:
        """Rebuild the model of a MAIST checkpoint (``best.ckpt``/``last.ckpt``) on CPU, read safely
        (:mod:`maist.checkpoint`). ``ink_ratio`` and ``stroke_width`` default to those measured on
        the checkpoint's training images (a checkpoint without ``stroke_width`` leaves strokes as
        drawn; ``stroke_width=0`` does so for any). Raises :class:`CheckpointError` with a one-line
        reason when it cannot."""
        module, ckpt = load_module(path)
        hp = ckpt["hyper_parameters"]
        try:
            pre = Preprocess(**as_recorded(hp["preprocess"]))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: its preprocessing settings are not valid ({err})") from None
        if ink_ratio is None:
            ink_ratio = hp.get("ink_ratio") or INK_FRAME_RATIO
        recorded = hp.get("stroke_width")
        if recorded is not None and not (isinstance(recorded, (int, float)) and 0 <= recorded < 1e3):
            raise CheckpointError(f"{path}: its stroke_width {recorded!r} is not a width in pixels")
        if stroke_width is None:
            stroke_width = recorded
        return cls(
            module.net,
            hp.get("classes") or [],
            pre.as_dict(),
            ink_ratio,
            str(Path(path).expanduser()),
            stroke_width=stroke_width,
            recorded_stroke_width=recorded,
        )

    def _num_outputs(self) -> int:
        last = [m for m in self.net.modules() if isinstance(m, torch.nn.Linear)]
        if last:
            return last[-1].out_features
        with torch.no_grad():
            return int(self.net(torch.zeros(1, 1, self.image_size, self.image_size)).shape[-1])

    # ------------------------------------------------------------------ inputs
    def prepare(self, image, name: str | None = None) -> torch.Tensor:
        """One picture → (1, 1, S, S) network input. Raises :class:`ImageError`."""
        if isinstance(image, (str, os.PathLike)):
            return self._input(load_image(image), name or str(image))
        if isinstance(image, (bytes, bytearray, memoryview)):
            return self._input(decode_image(bytes(image), name or "<upload>"), name or "<upload>")
        if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
            from maist.images import _to_grey

            return self._input(_to_grey(image), name or "image")
        arr = image
        if isinstance(arr, torch.Tensor) and arr.dim() == 4 or isinstance(arr, np.ndarray) and arr.ndim == 4:
            x = torch.as_tensor(arr, dtype=torch.float32)
            self._check_input(x)
            return x
        return self._input(np.asarray(arr), name or "image")

    def _input(self, grey: np.ndarray, name: str) -> torch.Tensor:
        return to_model_input(grey, self.preprocess, self.ink_ratio, name, stroke_width=self.stroke_width)

    def _check_input(self, x: torch.Tensor) -> None:
        s = self.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, s, s):
            raise ImageError(f"network input must be (N, 1, {s}, {s}), got {tuple(x.shape)}")

    def batch(self, images: Iterable) -> torch.Tensor:
        """Pictures (or one (N, 1, S, S) tensor) → one (N, 1, S, S) tensor."""
        if isinstance(images, (torch.Tensor, np.ndarray)) and np.ndim(images) == 4:
            return self.prepare(images)
        parts = [self.prepare(im) for im in images]
        if not parts:
            return torch.empty(0, 1, self.image_size, self.image_size)
        return torch.cat(parts)

    # ------------------------------------------------------------------ outputs
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, classes) outputs for network input ``x`` (N, 1, S, S)."""
        self._check_input(x)
        with self._lock:
            return inference.logits(self.net, x)

    def probabilities(self, images) -> torch.Tensor:
        """(N, classes) softmax probabilities."""
        return torch.softmax(self.logits(self.batch(images)), dim=-1)

    def top_k(self, images, k: int = 5) -> list[list[tuple[str, float]]]:
        """For each picture, the ``k`` likeliest kana with their probabilities, best first."""
        probs = self.probabilities(images)
        k = max(1, min(int(k), probs.shape[-1]))
        values, idx = probs.topk(k, dim=-1)
        return [[(self.classes[int(i)], float(v)) for v, i in zip(vs, ids)] for vs, ids in zip(values, idx)]

    def features(self, image, **kwargs) -> dict[str, np.ndarray]:
        """The article's figures for one picture (see :func:`maist.viz.feature_figures`): the
        input as the network sees it, the first-layer filters, and each layer's maps as tile
        grids (uint8 arrays), in the network's order."""
        from maist.viz import feature_figures

        x = self.prepare(image)
        if x.shape[0] != 1:
            raise ImageError(f"features() takes one picture, got {x.shape[0]}")
        with self._lock:
            return feature_figures(self.net, x, **kwargs)

    def describe(self) -> str:
        """One line about the model (its file, network, classes, input and preprocessing), safe to print."""
        return printable(
            f"{self.source}: {type(self.net).__name__}, {len(self.classes)} classes, "
            f"input 1×{self.image_size}×{self.image_size}, preprocess {self.preprocess_dict}, "
            f"ink_ratio {self.ink_ratio}, stroke_width "
            f"{'as drawn' if self.stroke_width is None else f'{self.stroke_width:.2f} px'}"
        )


# ---------------------------------------------------------------------- command line
def predictor_from_cli(cfg: dict, usage: str) -> Predictor:
    """What every command does first: require ``ckpt_path=``, set ``torch_threads=``, and load
    the checkpoint (with ``ink_ratio=`` if given)."""
    if not cfg["ckpt_path"]:
        raise UsageError(f"ckpt_path= is required\n{usage}")
    if cfg.get("torch_threads") is not None:
        torch.set_num_threads(int_option(cfg, "torch_threads"))
    ink_ratio = float_option(cfg, "ink_ratio", 0.0, 1.0, optional=True)
    stroke_width = _stroke_width_option(cfg)
    return Predictor.from_checkpoint(cfg["ckpt_path"], ink_ratio=ink_ratio, stroke_width=stroke_width)


def _stroke_width_option(cfg: dict) -> float | None:
    """``stroke_width=``: unset (the checkpoint's), 0 (strokes as drawn) or a width in pixels."""
    value = cfg.get("stroke_width")
    if value in (None, "", "null", "None"):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"stroke_width={value!r}: give a width in pixels at the network input (0: as drawn)") from None
    if not (math.isfinite(number) and 0 <= number <= 100):
        raise UsageError(f"stroke_width={value!r}: must lie in [0, 100] (0: strokes as drawn)")
    return number


USAGE = """usage: python -m maist.predict ckpt_path=CKPT inputs=[a.png,b.jpg,folder/] [format=table|json] [k=5]
       [ink_ratio=<the checkpoint's>] [stroke_width=<the checkpoint's>|0]
  inputs: picture files and folders (folders: their pictures, recursively); dark ink on light paper
  or the reverse, any size; a single input may be given as input=a.png
  stroke_width: pixels at the network input that strokes are made as wide as (0: as drawn)"""

DEFAULTS = {
    "ckpt_path": None,
    "inputs": [],
    "input": None,
    "format": "table",
    "k": 5,
    "ink_ratio": None,
    "stroke_width": None,
    "torch_threads": 1,
}


def _inputs(cfg: dict) -> list[Path]:
    raw = cfg.get("inputs")
    raw = [] if raw is None else ([raw] if isinstance(raw, (str, os.PathLike)) else list(raw))
    if cfg.get("input"):
        raw.append(cfg["input"])
    if not raw:
        raise UsageError(f"no pictures given: pass inputs=[a.png,folder/]\n{USAGE}")
    files = list_images(raw)
    if not files:
        raise UsageError(f"no pictures found in {', '.join(map(str, raw))} (suffixes: .png, .jpg, …)")
    return files


@cli
def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, DEFAULTS, USAGE)
    if cfg["format"] not in ("table", "json"):
        raise UsageError(f"format must be table or json, got {cfg['format']!r}")
    k = int_option(cfg, "k", minimum=1)
    files = _inputs(cfg)
    predictor = predictor_from_cli(cfg, USAGE)
    failed = 0
    # File names and the checkpoint's class names are data: printed with their control characters
    # (and a file name's undecodable bytes) escaped, so no name can break a row, the JSON's UTF-8
    # or the terminal.
    names = {f: printable(f) for f in files}
    if cfg["format"] == "table":
        width = max(len(n) for n in names.values())
        print(f"{'input':<{width}}  " + "  ".join(f"top{i + 1:<7}" for i in range(k)))
    for f in files:
        try:
            top = [(printable(c), p) for c, p in predictor.top_k([f], k=k)[0]]
        except ImageError as err:
            print(f"error: {printable(err)}", file=sys.stderr)
            failed += 1
            continue
        if cfg["format"] == "json":
            doc = {"input": names[f], f"top{k}": [[c, round(p, 6)] for c, p in top]}
            print(json.dumps(doc, ensure_ascii=False))
        else:
            print(f"{names[f]:<{width}}  " + "  ".join(f"{c} {p:6.1%}" for c, p in top))
        sys.stdout.flush()
    return EXIT_USAGE if failed else 0


if __name__ == "__main__":
    sys.exit(main())
