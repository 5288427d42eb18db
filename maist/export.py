"""Export a trained model to ONNX, and check it against PyTorch.

    python -m maist.export ckpt_path=CKPT format=onnx [out=model.onnx] [opset=17]

The ONNX model takes ``image``: float32 (N, 1, S, S), N free, **after** MAIST's preprocessing
(ink bright on black in [0, 1], S = the checkpoint's image_size), and returns ``logits`` and
``probabilities`` (N, classes). The class list (JSON), the preprocessing (JSON) and how to
reproduce it are embedded in the model (``metadata_props`` and ``doc_string``). After writing,
onnxruntime runs a batch of sample records and random inputs and its outputs are compared with
PyTorch's (max |difference| ≤ 1e-4 required); the result is printed.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from maist.cli import cli, parse_cli
from maist.errors import UsageError
from maist.files import atomic_path
from maist.images import FRAME_SIZE
from maist.predict import Predictor, predictor_from_cli

USAGE = "usage: python -m maist.export ckpt_path=CKPT [format=onnx] [out=PATH.onnx] [opset=17] [check_batch=32]"
DEFAULTS = {"ckpt_path": None, "format": "onnx", "out": None, "opset": 17, "check_batch": 32, "torch_threads": 1}
TOLERANCE = 1e-4
FORMATS = ("onnx",)


class _WithProbabilities(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image):
        logits = self.net(image)
        return logits, torch.softmax(logits, dim=-1)


def doc_string(predictor: Predictor) -> str:
    s = predictor.image_size
    pre = predictor.preprocess_dict
    return (
        f"MAIST handwritten-character classifier ({type(predictor.net).__name__}, {len(predictor.classes)} "
        f"classes). Input 'image': float32 [N, 1, {s}, {s}], N free, values in [0, 1], ink BRIGHT (1) on a black "
        f"(0) background, after MAIST preprocessing. For an ETL record: levels / max level (15; 1 for the "
        f"binary ETL8B2 and ETL9B), then maist.data.preprocess."
        f"Preprocess(**preprocess) with the 'preprocess' metadata ({json.dumps(pre)}). For a picture of dark "
        f"ink on light paper: maist.images.to_model_input(load_image(path), preprocess) (grey, invert, remove "
        f"the background, crop to the ink, pad to a square where the ink's longer side is "
        f"'ink_frame_ratio' of the frame, resize to {FRAME_SIZE}, then the same Preprocess). "
        f"Outputs: 'logits' and 'probabilities' (softmax), float32 [N, classes]; class i is the i-th "
        f"entry of the JSON list in metadata 'classes'."
    )


def export_onnx(predictor: Predictor, out: Path, opset: int = 17) -> Path:
    """Write ``predictor``'s network as ONNX with its metadata; returns the path."""
    try:
        import onnx
    except ImportError as err:
        raise UsageError("ONNX export needs the onnx package: pip install onnx onnxruntime") from err
    s = predictor.image_size
    model = _WithProbabilities(predictor.net).eval()
    with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
        # the legacy (TorchScript) exporter is deprecated but needs no onnxscript; the tracer's
        # note on odd-size pooling is moot: only the batch axis varies.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, s, s),),
            str(tmp),
            dynamo=False,
            opset_version=int(opset),
            input_names=["image"],
            output_names=["logits", "probabilities"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}},
        )
        add_metadata(onnx, tmp, predictor)
    return out


def add_metadata(onnx, path: Path, predictor: Predictor) -> None:
    """Embed the class list, the preprocessing and how to reproduce it in the ONNX file at ``path``."""
    from maist.images import INK_FRAME_RATIO

    s = predictor.image_size
    m = onnx.load(str(path))
    m.doc_string = doc_string(predictor)
    m.producer_name = "maist"
    meta = {
        "classes": json.dumps(predictor.classes, ensure_ascii=False),
        "preprocess": json.dumps(predictor.preprocess_dict),
        "image_size": str(s),
        "input_layout": "NCHW float32 in [0,1], ink bright on black, after MAIST preprocessing",
        "ink_frame_ratio": str(predictor.ink_ratio if predictor.ink_ratio else INK_FRAME_RATIO),
        "frame_size": str(FRAME_SIZE),
        "architecture": type(predictor.net).__name__,
        "source_checkpoint": Path(predictor.source).name,
    }
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    m.graph.input[0].doc_string = f"[N, 1, {s}, {s}] float32 in [0, 1], ink bright, preprocessed"
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def check_batch(predictor: Predictor, n: int = 32, seed: int = 0) -> torch.Tensor:
    """A batch of network inputs: preprocessed records of the shipped sample (not ETL data) and
    random images, so the check covers real-looking and arbitrary inputs. (The check compares
    two runtimes of one network: any characters do, whatever the checkpoint's class set.)"""
    from maist.data.etl import read_etl
    from maist.data.preprocess import etl_levels_to_float
    from maist.data.sample import SAMPLE_ZIP

    s = predictor.image_size
    n_rec = n // 2
    parts = []
    recs = read_etl(SAMPLE_ZIP)  # shipped in the package: a missing or damaged one is an error
    idx = np.linspace(0, len(recs) - 1, n_rec).astype(int)
    parts.append(predictor.preprocess(etl_levels_to_float(recs.images[idx], recs.max_level))[:, None])
    g = torch.Generator().manual_seed(seed)
    parts.append(torch.rand(n - n_rec, 1, s, s, generator=g))
    return torch.cat(parts)


def compare_onnx(predictor: Predictor, path: Path, x: torch.Tensor) -> dict:
    """Run ``x`` through onnxruntime and PyTorch; max |differences| and top-1 agreement."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise UsageError("checking the export needs onnxruntime: pip install onnxruntime") from err
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    logits_ort, probs_ort = sess.run(["logits", "probabilities"], {"image": x.numpy().astype(np.float32)})
    logits_pt = predictor.logits(x).numpy()
    probs_pt = torch.softmax(torch.from_numpy(logits_pt), -1).numpy()
    return {
        "batch": len(x),
        "max_abs_diff_logits": float(np.abs(logits_ort - logits_pt).max()),
        "max_abs_diff_probabilities": float(np.abs(probs_ort - probs_pt).max()),
        "top1_agree": float((logits_ort.argmax(1) == logits_pt.argmax(1)).mean()),
    }


@cli
def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, DEFAULTS, USAGE)
    if cfg["format"] not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {cfg['format']!r}")
    predictor = predictor_from_cli(cfg, USAGE)
    ckpt = Path(str(cfg["ckpt_path"]))
    out = Path(str(cfg["out"])) if cfg["out"] else ckpt.with_suffix(".onnx")
    export_onnx(predictor, out, int(cfg["opset"]))
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): input image [N, 1, {predictor.image_size}, "
        f"{predictor.image_size}], outputs logits, probabilities [N, {len(predictor.classes)}]"
    )
    res = compare_onnx(predictor, out, check_batch(predictor, int(cfg["check_batch"])))
    ok = res["max_abs_diff_logits"] <= TOLERANCE and res["max_abs_diff_probabilities"] <= TOLERANCE
    print(
        f"check: onnxruntime vs PyTorch on a batch of {res['batch']}: max |Δ logits| = "
        f"{res['max_abs_diff_logits']:.2e}, max |Δ probabilities| = {res['max_abs_diff_probabilities']:.2e}, "
        f"top-1 agreement {res['top1_agree']:.0%}: {'OK' if ok else 'FAILED'} (tolerance {TOLERANCE:g})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
