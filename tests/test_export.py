"""`python -m maist.export`: ONNX with the class list and preprocessing inside, checked against PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import held_out, paper_picture

onnx = pytest.importorskip("onnx", reason="ONNX export tests need: pip install onnx onnxruntime")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need: pip install onnx onnxruntime")


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tmp_path_factory):
    from maist.export import main

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    rc = main([f"ckpt_path={tiny_ckpt}", "format=onnx", f"out={out}", "check_batch=8"])
    assert rc == 0
    return out


def test_cli_writes_and_checks(tiny_ckpt, tmp_path, capsys):
    from maist.export import main

    out = tmp_path / "m.onnx"
    assert main([f"ckpt_path={tiny_ckpt}", f"out={out}", "check_batch=6"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "onnxruntime vs PyTorch on a batch of 6" in text and ": OK" in text


def test_metadata_describes_classes_and_preprocessing(exported, predictor):
    m = onnx.load(str(exported))
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["classes"]) == predictor.classes
    assert json.loads(meta["preprocess"]) == predictor.preprocess_dict
    assert meta["image_size"] == "28" and float(meta["ink_frame_ratio"]) == predictor.ink_ratio
    assert "ink BRIGHT" in m.doc_string and "Preprocess" in m.doc_string
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]  # batch axis is free


@pytest.mark.parametrize("n", [1, 5])
def test_onnxruntime_matches_pytorch_on_pictures(exported, predictor, n):
    x = torch.cat([predictor.prepare(paper_picture(held_out(c))) for c in "くしつのもん"[:n]])
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    logits, probs = sess.run(None, {"image": x.numpy()})
    want = predictor.logits(x).numpy()
    assert logits.shape == (n, len(predictor.classes))
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(want), -1).numpy(), atol=1e-4, rtol=0)


def test_bad_checkpoint_and_format_exit_2(tmp_path, capsys):
    from maist.export import main

    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"nonsense")
    assert main([f"ckpt_path={bad}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "x.ckpt" in err and "Traceback" not in err
    assert main([f"ckpt_path={bad}", "format=tflite"]) == 2
    assert "format must be one of onnx" in capsys.readouterr().err
