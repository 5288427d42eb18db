"""Predictor and `python -m maist.predict`, on a tiny model trained here on the generated sample.

The model (tests.helpers.tiny_checkpoint, the ``tiny_ckpt`` and ``predictor`` fixtures of
conftest.py) is trained at test time, once per session, on 12 kana of the shipped sample (fonts,
not ETL data), and saved in Lightning's checkpoint format; other test modules use it too.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import (
    REPO,
    TINY_CHARS,
    held_out,
    paper_picture,
    run_python,
    tiny_checkpoint,
    tiny_predictor,  # noqa: F401  (test_serve.py and test_browser.py import it from here)
)

# ``python -m maist.predict`` in a bare environment: no locale, a HOME of nothing of the user's
BARE_ENV = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": tempfile.gettempdir()}


# ---------------------------------------------------------------------- Predictor
def test_checkpoint_rebuilds_with_its_classes_and_preprocess(predictor):
    assert predictor.classes == list(TINY_CHARS)
    assert predictor.image_size == 28
    assert predictor.preprocess_dict["contrast"] == "stretch"
    assert not predictor.net.training


def test_a_checkpoint_from_before_a_preprocessing_key_is_read_as_it_was_trained(tiny_ckpt, tmp_path):
    """``crop_border`` came later: a checkpoint without it preprocesses as before (no band), not
    with today's default; one with it keeps its own value."""
    from maist.checkpoint import data_spec, read_checkpoint
    from maist.predict import Predictor

    ckpt = read_checkpoint(tiny_ckpt)
    assert "crop_border" in ckpt["hyper_parameters"]["preprocess"]  # checkpoints record it now
    ckpt["hyper_parameters"]["preprocess"]["crop_border"] = 0.1
    torch.save(ckpt, tmp_path / "own.ckpt")
    del ckpt["hyper_parameters"]["preprocess"]["crop_border"]
    torch.save(ckpt, tmp_path / "before.ckpt")

    assert Predictor.from_checkpoint(tmp_path / "own.ckpt").preprocess.crop_border == 0.1
    assert Predictor.from_checkpoint(tmp_path / "before.ckpt").preprocess.crop_border == 0.0
    assert data_spec(read_checkpoint(tmp_path / "before.ckpt"))["preprocess"]["crop_border"] == 0.0


def test_top_k_reads_held_out_pictures(predictor, tmp_path):
    from PIL import Image

    paths, expected = [], []
    for c in "くしつのもん":
        p = tmp_path / f"{c}.png"
        Image.fromarray(paper_picture(held_out(c))).save(p)
        paths.append(p)
        expected.append(c)
    tops = predictor.top_k(paths, k=5)
    assert len(tops) == len(paths) and all(len(t) == 5 for t in tops)
    for t in tops:
        probs = [p for _, p in t]
        assert probs == sorted(probs, reverse=True) and 0.0 <= probs[-1] and probs[0] <= 1.0
    hits = sum(t[0][0] == c for t, c in zip(tops, expected))
    assert hits >= 5, [(c, t[0]) for t, c in zip(tops, expected)]


def test_top_k_accepts_arrays_bytes_and_network_input(predictor):
    import io

    from PIL import Image

    pic = paper_picture(held_out("く"))
    buf = io.BytesIO()
    Image.fromarray(pic).save(buf, format="PNG")
    a = predictor.top_k([pic])[0]
    b = predictor.top_k([buf.getvalue()])[0]
    x = predictor.prepare(pic)
    assert x.shape == (1, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    c = predictor.top_k(x)[0]
    assert a[0][0] == b[0][0] == c[0][0]
    assert a[0][1] == pytest.approx(c[0][1], abs=1e-6)


def test_features_are_the_articles_figures(predictor):
    figs = predictor.features(paper_picture(held_out("し")))
    for name in ("input", "filters", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2"):
        assert name in figs and figs[name].dtype == np.uint8 and figs[name].size > 0


# ---------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("pictures")
    Image.fromarray(paper_picture(held_out("く"))).save(folder / "ku.png")
    sub = folder / "more"
    sub.mkdir()
    Image.fromarray(paper_picture(held_out("つ"))).convert("RGB").save(sub / "tsu.jpg", quality=90)
    return folder


def test_cli_table_and_json(tiny_ckpt, pictures, tmp_path, capsys):
    from maist.predict import main

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a picture")
    rc = main([f"ckpt_path={tiny_ckpt}", f"inputs=[{pictures / 'ku.png'},{pictures / 'more'}]", "format=json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["input"]).name for r in rows] == ["ku.png", "tsu.jpg"]
    assert all(len(r["top5"]) == 5 and isinstance(r["top5"][0][0], str) for r in rows)
    assert rows[0]["top5"][0][0] == "く"

    rc = main([f"ckpt_path={tiny_ckpt}", f"inputs=[{pictures}/,{bad}]"])
    out, err = capsys.readouterr()
    assert rc == 2  # the readable pictures are still predicted
    assert "ku.png" in out and "tsu.jpg" in out and "top1" in out
    assert err.strip().count("\n") == 0 and "broken.png" in err and "Traceback" not in err


@pytest.mark.slow
def test_names_from_files_cannot_break_the_output(tiny_ckpt, pictures, tmp_path):
    """A file name with a newline or undecodable bytes, and class names from the checkpoint holding
    terminal escape sequences, print escaped: one table row each, valid UTF-8 JSON, no control
    character reaching the terminal."""
    import os
    import shutil

    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["classes"] = [f"\x1b[2J{c}\u202e" for c in ckpt["hyper_parameters"]["classes"]]
    hostile = tmp_path / "hostile.ckpt"
    torch.save(ckpt, hostile)
    folder = tmp_path / "pics"
    folder.mkdir()
    odd = [b"two\nlines.png", b"latin1-\xe9.png"]
    for name in odd:
        shutil.copy(pictures / "ku.png", os.path.join(os.fsencode(folder), name))
    for fmt in ("table", "json"):
        args = [f"ckpt_path={hostile}", f"inputs=[{folder}]", f"format={fmt}", "k=2"]
        proc = run_python("-m", "maist.predict", *args, env=BARE_ENV)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout.encode("utf-8", "surrogateescape")
        out.decode("utf-8")  # valid UTF-8
        assert b"\x1b" not in out and "\u202e".encode() not in out
        lines = proc.stdout.splitlines()
        assert len(lines) == len(odd) + (fmt == "table")
        if fmt == "json":
            rows = [json.loads(line) for line in lines]
            assert sorted(Path(r["input"]).name for r in rows) == ["latin1-\\xe9.png", "two\\nlines.png"]
            assert rows[0]["top2"][0][0] == "\\x1b[2Jく\\u202e"


@pytest.mark.parametrize(
    "problem",
    [
        "missing",
        "corrupt",
        "no inputs",
        "unknown key",
        "k=abc",
        "k=0",
        "k=2.5",
        "ink_ratio=5",
        "ink_ratio=abc",
        "torch_threads=0",
    ],
)
def test_cli_bad_arguments_are_one_line_exit_2(problem, pictures, tmp_path, capsys):
    from maist.predict import main

    path = tmp_path / "model.ckpt"
    if problem == "corrupt":
        path.write_bytes(b"PK\x03\x04 truncated")
    args = [f"ckpt_path={path}", f"inputs=[{pictures}]"]
    if problem == "no inputs":
        args = [f"ckpt_path={path}", f"inputs=[{tmp_path / 'empty'}/]"]
        (tmp_path / "empty").mkdir()
    if problem == "unknown key":
        args.append("colour=blue")
    if "=" in problem:  # a bad option with a good checkpoint
        args = [f"ckpt_path={tiny_checkpoint()}", f"inputs=[{pictures}]", problem]
    rc = main(args)
    _, err = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1
    assert {
        "missing": "model.ckpt: no such checkpoint",
        "corrupt": "model.ckpt: truncated or damaged",
        "no inputs": "no pictures found",
        "unknown key": "unknown argument colour=",
        "k=abc": "k='abc': give a whole number ≥ 1",
        "k=0": "k=0: must be at least 1",
        "k=2.5": "k=2.5: give a whole number",
        "ink_ratio=5": "ink_ratio=5: must lie in (0, 1]",
        "ink_ratio=abc": "ink_ratio='abc': give a number",
        "torch_threads=0": "torch_threads=0: must be at least 1",
    }[problem] in err


@pytest.mark.slow
def test_python_m_entry_point_exits_2_without_traceback(tmp_path):
    picture = tmp_path / "missing.png"
    res = run_python("-m", "maist.predict", f"ckpt_path={tmp_path / 'model.ckpt'}", f"inputs=[{picture}]", env=BARE_ENV)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'model.ckpt'}: no such checkpoint (pass ckpt_path=…/checkpoints/best.ckpt or last.ckpt "
        "of a MAIST run)"
    ]


# ---------------------------------------------------------------------- python -m maist.visualize
def test_visualize_char_and_picture_write_the_figures(tiny_ckpt, pictures, tmp_path, capsys):
    from PIL import Image

    from maist.visualize import main

    assert main([f"ckpt_path={tiny_ckpt}", "char=く", f"out={tmp_path / 'ku'}"]) == 0
    out = capsys.readouterr().out.split()
    names = [Path(p).name for p in out]
    assert names == [
        "00_input.png",
        "01_filters.png",
        "02_conv1.png",
        "03_relu1.png",
        "04_pool1.png",
        "05_conv2.png",
        "06_relu2.png",
        "07_pool2.png",
        "08_top5.png",
    ]
    assert all(Path(p).is_file() and Path(p).parent == tmp_path / "ku" for p in out)
    assert Image.open(out[-1]).mode == "RGB" and Image.open(out[2]).mode == "L"

    assert main([f"ckpt_path={tiny_ckpt}", f"input={pictures / 'ku.png'}", f"out={tmp_path / 'pic'}"]) == 0
    assert len(capsys.readouterr().out.split()) == 9


@pytest.mark.parametrize(
    "args, message",
    [
        (["char=ぬ", "record=999"], "record=999"),
        (["char=ab"], "give one character"),
        (["input=/nonexistent/x.png"], "/nonexistent/x.png: no such file"),
        (["char=ぬ", "input=x.png"], "either char= or input="),
        (["char=ぬ", "data_root=/nonexistent"], "/nonexistent: no such file or folder"),
    ],
)
def test_visualize_bad_arguments_exit_2(tiny_ckpt, tmp_path, capsys, args, message):
    from maist.visualize import main

    assert main([f"ckpt_path={tiny_ckpt}", f"out={tmp_path}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err.splitlines()[0] and "Traceback" not in err
