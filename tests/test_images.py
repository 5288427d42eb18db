"""maist.images: user pictures (dark ink on light paper, any size, off-centre, photographed)
→ the network's input, through the checkpoint's own training Preprocess."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from maist.data.preprocess import Preprocess, etl_levels_to_float
from maist.images import (
    FRAME_SIZE, INK_FRAME_RATIO, ImageError, NoInkError, decode_image, load_image, normalize_ink, to_model_input,
)
from test_predict import held_out, paper_picture, sample_records, tiny_predictor


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")  # (H, W, 4) uint8 is RGBA
    return buf.getvalue()


def _bbox(x: np.ndarray, level: float = 0.3):
    ys, xs = np.nonzero(x > level)
    return ys.min(), ys.max(), xs.min(), xs.max()


# ---------------------------------------------------------------------- the frame
def test_ink_frame_ratio_matches_the_generated_sample():
    """INK_FRAME_RATIO is the ink-bbox-to-frame ratio of ETL8G-like training data (see the
    constant's comment for the measurements); the sample's median stays near it."""
    images, _, _ = sample_records()
    x = Preprocess(image_size=128)(etl_levels_to_float(images[::6])).numpy()
    ratios = []
    for img in x:  # the ink's extent from its 0.5th to its 99.5th percentile (noise specks aside)
        ys, xs = np.nonzero(img > 0.3)
        (y0, y1), (x0, x1) = np.percentile(ys, [0.5, 99.5]), np.percentile(xs, [0.5, 99.5])
        ratios.append((max(y1 - y0, x1 - x0) + 1) / 128)
    assert abs(np.median(ratios) - INK_FRAME_RATIO) < 0.08


def test_normalize_frames_the_ink_like_a_record():
    pic = paper_picture(held_out("あ"))
    canvas = np.full((400, 700), 255, np.uint8)
    canvas[250:377, 500:628] = pic  # far off-centre, bottom right
    x = normalize_ink(canvas)
    assert x.shape == (FRAME_SIZE, FRAME_SIZE) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9  # ink bright, stretched
    assert x[:4].max() == 0 and x[:, :4].max() == 0  # black paper around
    y0, y1, x0, x1 = _bbox(x)
    side = max(y1 - y0, x1 - x0) + 1
    assert side / FRAME_SIZE == pytest.approx(INK_FRAME_RATIO, abs=0.04)
    assert (y0 + y1) / 2 == pytest.approx(FRAME_SIZE / 2, abs=3) and (x0 + x1) / 2 == pytest.approx(FRAME_SIZE / 2, abs=3)


def test_polarity_does_not_matter():
    pic = paper_picture(held_out("し"))
    a, b = normalize_ink(pic), normalize_ink(255 - pic)  # dark on white, light on black
    assert np.abs(a - b).mean() < 0.02


def test_specks_do_not_stretch_the_box():
    pic = paper_picture(held_out("つ")).copy()
    clean = normalize_ink(pic)
    pic[2:5, 2:5] = 0  # dust in a corner
    pic[120:123, 124:127] = 0
    assert np.abs(normalize_ink(pic) - clean).mean() < 0.02


def test_blank_and_flat_pictures_have_no_ink():
    for pic in (np.full((280, 280), 255, np.uint8), np.zeros((50, 80), np.uint8),
                np.full((100, 100), 128, np.uint8)):
        with pytest.raises(NoInkError, match="no ink"):
            normalize_ink(pic)
    noisy = np.clip(np.random.default_rng(0).normal(230, 2, (200, 200)), 0, 255).astype(np.uint8)
    with pytest.raises(NoInkError):
        normalize_ink(noisy)


def test_to_model_input_is_the_checkpoints_preprocess():
    pic = paper_picture(held_out("く"))
    for spec in ({"image_size": 28}, {"image_size": 32, "threshold": 0.2},
                 {"image_size": 28, "crop": True, "margin": 0.1}):
        x = to_model_input(pic, spec)
        s = spec["image_size"]
        assert x.shape == (1, 1, s, s) and x.dtype == torch.float32
        assert torch.equal(x, Preprocess(**spec)(normalize_ink(pic)[None])[:, None])
    with pytest.raises(ValueError):  # an unknown preprocessing is refused, not ignored
        to_model_input(pic, {"image_size": 28, "contrast": "fancy"})


# ---------------------------------------------------------------------- reading files
def test_load_image_grey_alpha_and_orientation(tmp_path):
    rgba = np.zeros((40, 60, 4), np.uint8)  # transparent canvas with a black stroke
    rgba[10:30, 20:24] = (0, 0, 0, 255)
    g = decode_image(_png(rgba))
    assert g.shape == (40, 60) and g[0, 0] == 1.0 and g[20, 21] == 0.0  # transparency = white paper

    img = Image.fromarray(np.tile(np.linspace(0, 255, 60, dtype=np.uint8), (40, 1)))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    img.save(tmp_path / "photo.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "photo.jpg").shape == (60, 40)

    sixteen = (np.arange(30 * 30).reshape(30, 30) * 70).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    d = load_image(tmp_path / "deep.png")
    assert d.min() == 0.0 and d.max() == 1.0


def test_unreadable_pictures_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="nope.png: no such file"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(ImageError, match="bad.png: "):
        load_image(tmp_path / "bad.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg: empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="upload: not a picture"):
        decode_image(b"hello world", "upload")


# ---------------------------------------------------------------------- robustness of the answer
def _perturbations(pic: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, w = pic.shape
    out = {}
    canvas = np.full((3 * h, 3 * w), 255, np.uint8)
    canvas[10 : 10 + h, 2 * w - 20 : 3 * w - 20] = pic
    out["off-centre"] = canvas
    out["inverted"] = 255 - pic  # light ink on dark
    out["small"] = np.asarray(Image.fromarray(pic).resize((w // 2, h // 2), Image.BILINEAR))
    out["large"] = np.asarray(Image.fromarray(pic).resize((int(w * 2.7), int(h * 2.7)), Image.BICUBIC))
    big = np.asarray(Image.fromarray(pic).resize((2 * w, 2 * h), Image.BILINEAR)).astype(np.float32) / 255
    paper = np.ones((4 * h, 5 * w), np.float32)
    paper[h // 2 : h // 2 + 2 * h, 2 * w : 4 * w] = big
    yy, xx = np.mgrid[0 : paper.shape[0], 0 : paper.shape[1]]
    light = 0.55 + 0.4 * xx / paper.shape[1] + 0.05 * np.sin(yy / 40)  # uneven light
    photo = paper * light + rng.normal(0, 0.04, paper.shape)  # sensor noise
    buf = io.BytesIO()
    Image.fromarray((photo.clip(0, 1) * 255).astype(np.uint8)).convert("RGB").save(buf, format="JPEG", quality=75)
    out["photo"] = np.asarray(Image.open(buf).convert("L"))
    return out


@pytest.mark.parametrize("char", list("あくしつのもん"))
def test_top1_is_stable_under_placement_scale_polarity_and_noise(char):
    predictor = tiny_predictor()
    rng = np.random.default_rng(ord(char))
    pic = paper_picture(held_out(char, k=1))
    clean = predictor.top_k([pic])[0][0][0]
    variants = _perturbations(pic, rng)
    tops = dict(zip(variants, (t[0][0] for t in predictor.top_k(list(variants.values())))))
    assert all(t == clean for t in tops.values()), f"clean {clean}: {tops}"
