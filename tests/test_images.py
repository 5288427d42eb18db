"""maist.images: user pictures (dark ink on light paper, any size, off-centre, photographed)
→ the network's input, through the checkpoint's own training Preprocess."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from maist.data.preprocess import Preprocess, etl_levels_to_float, ink_box
from maist.images import (
    FRAME_SIZE,
    INK_FRAME_RATIO,
    ImageError,
    NoInkError,
    decode_image,
    load_image,
    normalize_ink,
    to_model_input,
)
from tests.helpers import PLAIN, REPO, held_out, paper_picture, plain_preprocess, run_python, sample_records


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
    x = plain_preprocess(image_size=128)(etl_levels_to_float(images[::6])).numpy()
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
    assert (y0 + y1) / 2 == pytest.approx(FRAME_SIZE / 2, abs=3) and (x0 + x1) / 2 == pytest.approx(
        FRAME_SIZE / 2, abs=3
    )


@pytest.mark.parametrize("ratio", [0.5, INK_FRAME_RATIO, 0.86])
def test_the_framing_follows_the_training_images_ink_ratio(ratio):
    """A picture is framed by the box the training images' ink ratio is measured by
    (``Part.ink_ratio``, both :func:`ink_box`): measured back on the framed picture, and on the
    network input of a checkpoint that does not crop, it is the ratio asked for."""
    from maist.data.datamodule import Part

    pic = paper_picture(held_out("あ"))
    x = torch.from_numpy(normalize_ink(pic, ratio))
    top, bottom, left, right = (int(v) for v in ink_box(x[None]))
    assert max(bottom - top, right - left) + 1 == pytest.approx(ratio * FRAME_SIZE, abs=2.5)  # resampling blurs a pixel
    images = to_model_input(pic, {**PLAIN, "image_size": 28}, ratio)  # resized only: the frame is kept
    part = Part((255 * images).round().to(torch.uint8), torch.zeros(1, dtype=torch.long), torch.zeros(1))
    assert part.ink_ratio() == pytest.approx(ratio, abs=1.5 / 28)


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
    for pic in (np.full((280, 280), 255, np.uint8), np.zeros((50, 80), np.uint8), np.full((100, 100), 128, np.uint8)):
        with pytest.raises(NoInkError, match="no ink"):
            normalize_ink(pic)
    noisy = np.clip(np.random.default_rng(0).normal(230, 2, (200, 200)), 0, 255).astype(np.uint8)
    with pytest.raises(NoInkError):
        normalize_ink(noisy)


def test_to_model_input_is_the_checkpoints_preprocess():
    pic = paper_picture(held_out("く"))
    for spec in (
        {**PLAIN, "image_size": 28},
        {**PLAIN, "image_size": 32, "threshold": 0.2},
        {**PLAIN, "image_size": 28, "crop": True, "margin": 0.1},
    ):
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
def test_top1_is_stable_under_placement_scale_polarity_and_noise(predictor, char):
    rng = np.random.default_rng(ord(char))
    pic = paper_picture(held_out(char, k=1))
    clean = predictor.top_k([pic])[0][0][0]
    variants = _perturbations(pic, rng)
    tops = dict(zip(variants, (t[0][0] for t in predictor.top_k(list(variants.values())))))
    assert all(t == clean for t in tops.values()), f"clean {clean}: {tops}"


# ---------------------------------------------------------------------- transparency, links, size
def _stroke_rgba(levels: np.ndarray, colour: int, bg: tuple = (0, 0, 0, 0)) -> bytes:
    """A record's ink as a stroke of one ``colour`` on a transparent canvas: the ink is the alpha."""
    rgba = np.zeros(levels.shape + (4,), np.uint8)
    rgba[...] = bg
    drawn = levels > 0
    rgba[drawn, :3] = colour
    rgba[drawn, 3] = np.round(255 * levels[drawn].astype(np.float32) / 15).astype(np.uint8)
    return _png(rgba)


@pytest.mark.parametrize("bg", [(0, 0, 0, 0), (255, 255, 255, 0)], ids=["black-transparent", "white-transparent"])
def test_white_strokes_on_transparent_read_like_black_ones(bg):
    """The ink of a transparent canvas is its alpha: white strokes (a dark-theme canvas) read as the
    same drawing as black strokes, whatever colour the transparent pixels hold."""
    levels = held_out("の")
    black = normalize_ink(decode_image(_stroke_rgba(levels, 0, bg)))
    white = normalize_ink(decode_image(_stroke_rgba(levels, 255, bg)))
    opaque = normalize_ink(paper_picture(levels))
    assert np.abs(white - black).mean() < 0.01
    assert np.abs(black - opaque).mean() < 0.03
    pre = {**PLAIN, "image_size": 28}
    assert torch.allclose(
        to_model_input(decode_image(_stroke_rgba(levels, 255, bg)), pre),
        to_model_input(decode_image(_stroke_rgba(levels, 0, bg)), pre),
        atol=0.05,
    )


def test_white_stroke_on_transparent_is_dark_on_light_paper():
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[10:30, 20:24] = (255, 255, 255, 255)  # white ink, transparent elsewhere
    g = decode_image(_png(rgba))
    assert g[0, 0] == 1.0 and g[20, 21] == 0.0  # as seen on contrasting paper, then paper light


def test_dangling_link_in_a_folder_is_reported(tmp_path):
    from maist.images import list_images

    Image.fromarray(paper_picture(held_out("あ"))).save(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not a picture's name: not listed
    files = list_images([tmp_path])
    assert files == [tmp_path / "a.png", tmp_path / "b.png"]
    with pytest.raises(ImageError, match=r"b.png: a dangling link \(its target .*gone.png does not exist\)"):
        load_image(files[1])
    assert load_image(files[0]).shape == (127, 128)


def test_predict_counts_a_dangling_link_as_failed(tiny_ckpt, tmp_path, capsys):
    from maist.predict import main

    Image.fromarray(paper_picture(held_out("あ"))).save(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    assert main([f"ckpt_path={tiny_ckpt}", f"inputs=[{tmp_path}]"]) == 2
    out, err = capsys.readouterr()
    assert "a.png" in out and "b.png: a dangling link" in err


def _bilevel_png(width: int, height: int) -> bytes:
    """A 1-bit PNG of ``width`` × ``height`` with one black square: a few KB for any size."""
    img = Image.new("1", (width, height), 1)
    img.paste(0, (width // 3, height // 3, width // 3 + 50, height // 3 + 50))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_pixel_cap_is_far_below_pillows_and_checked_from_the_header(tmp_path):
    from maist.images import MAX_PIXELS, ImageTooLargeError

    assert MAX_PIXELS <= 4096 * 4096 < Image.MAX_IMAGE_PIXELS
    side = int(MAX_PIXELS**0.5) + 1
    data = _bilevel_png(side, side)
    assert len(data) < 100_000
    with pytest.raises(ImageTooLargeError, match=f"upload: {side}×{side} pixels is too large"):
        decode_image(data, "upload")
    (tmp_path / "big.png").write_bytes(data)
    with pytest.raises(ImageTooLargeError, match="big.png: .* too large"):
        load_image(tmp_path / "big.png")
    assert decode_image(_bilevel_png(2000, 1500)).shape == (1500, 2000)  # a large drawing is fine


DECODE_PROBE = """
import resource, sys, time
sys.path.insert(0, sys.argv[1])
from test_images import _bilevel_png
from maist.images import ImageError, decode_image
data = _bilevel_png(6000, 6000)  # 36 megapixels in a few KB: ~0.5 GB to decode and convert
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    decode_image(data, "bomb")
    outcome = "decoded"
except ImageError as err:
    outcome = "refused: " + str(err)
grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(f"{outcome}|{grew_mb:.0f}|{time.perf_counter() - t:.3f}")
"""


@pytest.mark.slow
def test_a_small_file_of_many_pixels_is_refused_without_decoding_it():
    """A 36-megapixel PNG of a few KB (a decompression bomb in miniature) is refused from its
    header: no time, no memory (peak RSS measured in a fresh process)."""
    tests = str(REPO / "tests")
    run = run_python("-c", DECODE_PROBE, tests, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    outcome, grew_mb, seconds = run.stdout.strip().rsplit("|", 2)
    assert outcome.startswith("refused: bomb: 6000×6000 pixels is too large"), outcome
    assert float(grew_mb) < 100 and float(seconds) < 1.0, (grew_mb, seconds)


# ---------------------------------------------------------------------- stroke width
def _band(width: int, length: int = 80, side: int = 100) -> torch.Tensor:
    x = torch.zeros(1, side, side)
    x[0, 20 : 20 + width, 10 : 10 + length] = 1.0
    return x


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8])
def test_stroke_width_of_a_band_is_its_width(width):
    """2 · ink / edge length: a band w wide and L long reads w·L / (L + w) (its two ends count as edge)."""
    from maist.images import stroke_widths

    assert float(stroke_widths(_band(width))[0]) == pytest.approx(width * 80 / (80 + width), rel=0.02)


def test_stroke_width_of_grey_and_blank_images():
    from maist.images import stroke_width, stroke_widths

    # a 2-px band drawn at half ink is still 2 px wide; an image without ink gives 0
    assert float(stroke_widths(0.5 * _band(2))[0]) == pytest.approx(float(stroke_widths(_band(2))[0]))
    both = torch.cat([_band(3), torch.zeros(1, 100, 100), _band(3)])
    assert stroke_widths(both)[1] == 0
    assert stroke_width(both) == pytest.approx(float(stroke_widths(_band(3))[0]))  # the blank one is ignored
    assert stroke_width(torch.zeros(2, 10, 10)) == 0.0
    # uint8 (as the datasets store them) and (N, 1, S, S) give the same figure
    assert stroke_width((255 * both).round().to(torch.uint8)[:, None]) == pytest.approx(stroke_width(both), rel=1e-3)


def test_morph_makes_strokes_bolder_and_thinner_by_its_radius():
    from maist.images import morph, stroke_widths

    line = _band(1)[0]
    assert int((morph(line, 2)[:, 50] > 0.5).sum()) == 5  # 1 px + 2 a side
    assert int((morph(_band(7)[0], -2)[:, 50] > 0.5).sum()) == 3
    assert torch.equal(morph(line, 0), line)
    half = morph(line, 1.5)  # a fractional radius blends the two nearest
    assert torch.allclose(half, (morph(line, 1) + morph(line, 2)) / 2)
    w = [float(stroke_widths(morph(line, r)[None])[0]) for r in (0, 0.5, 1, 1.5, 2)]
    assert w == sorted(w) and w[-1] > 4


def _drawn(pen: int, size: tuple[int, int] = (84, 83)) -> np.ndarray:
    """A ring and a bar drawn with a round pen ``pen`` px wide, dark on white."""
    from PIL import ImageDraw

    img = Image.new("L", size, 255)
    d = ImageDraw.Draw(img)
    w, h = size
    d.ellipse((0.18 * w, 0.18 * h, 0.82 * w, 0.82 * h), outline=0, width=pen)
    d.line((w / 2, 0.06 * h, w / 2, 0.94 * h), fill=0, width=pen)
    return np.asarray(img)


BEST_PRE = Preprocess(
    threshold=0.35, despeckle=3, crop=True, crop_mass=0.05, margin=0.08, crop_connect=0.2, crop_bridge=0.02
)


@pytest.mark.parametrize("pen, size", [(1, (84, 83)), (2, (84, 83)), (3, (400, 400)), (6, (200, 200))])
@pytest.mark.parametrize("target", [2.2, 2.6])
def test_match_stroke_width_brings_thin_pens_to_the_training_width(pen, size, target):
    from maist.images import STROKE_TOLERANCE, match_stroke_width, stroke_widths

    framed = normalize_ink(_drawn(pen, size))
    w0 = float(stroke_widths(BEST_PRE(framed[None]))[0])
    assert w0 < target * (1 - STROKE_TOLERANCE)  # thinner than the training strokes, all of them
    out = match_stroke_width(framed, BEST_PRE, target)
    assert out.shape == (28, 28) and out.min() >= 0 and out.max() <= 1
    assert float(stroke_widths(out)[0]) == pytest.approx(target, rel=0.05)


def test_bold_strokes_are_left_unless_erosion_is_asked_for():
    from maist.images import match_stroke_width, stroke_widths

    framed = normalize_ink(_drawn(12))
    plain = BEST_PRE(framed[None])[0]
    assert float(stroke_widths(plain)[0]) > 2.6
    assert torch.equal(match_stroke_width(framed, BEST_PRE, 1.9), plain)
    thinned = match_stroke_width(framed, BEST_PRE, 1.9, erode=True)
    assert float(stroke_widths(thinned)[0]) == pytest.approx(1.9, rel=0.05)


def test_a_picture_at_the_training_width_is_left_as_it_is():
    from maist.images import match_stroke_width, stroke_widths

    framed = normalize_ink(_drawn(6))
    plain = BEST_PRE(framed[None])[0]
    w = float(stroke_widths(plain)[0])
    assert torch.equal(match_stroke_width(framed, BEST_PRE, w * 1.05), plain)
    assert torch.equal(to_model_input(_drawn(6), BEST_PRE, stroke_width=w)[0, 0], plain)
    assert torch.equal(to_model_input(_drawn(6), BEST_PRE, stroke_width=None), plain[None, None])


def test_predictor_matches_strokes_only_when_asked_or_recorded(tiny_ckpt, tmp_path):
    """A checkpoint without a ``stroke_width`` hparam (older ones) predicts as before; one with it,
    or ``stroke_width=`` given, matches; ``stroke_width=0`` turns it off."""
    from maist.predict import Predictor

    old = Predictor.from_checkpoint(tiny_ckpt)
    assert old.stroke_width is None and old.recorded_stroke_width is None
    pic = _drawn(1)
    assert torch.equal(old.prepare(pic), to_model_input(pic, old.preprocess, old.ink_ratio))
    asked = Predictor.from_checkpoint(tiny_ckpt, stroke_width=2.4)
    assert asked.stroke_width == 2.4
    assert torch.equal(asked.prepare(pic), to_model_input(pic, old.preprocess, old.ink_ratio, stroke_width=2.4))
    assert not torch.equal(asked.prepare(pic), old.prepare(pic))
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["stroke_width"] = 2.4
    torch.save(ckpt, tmp_path / "recorded.ckpt")
    recorded = Predictor.from_checkpoint(tmp_path / "recorded.ckpt")
    assert recorded.stroke_width == recorded.recorded_stroke_width == 2.4
    assert torch.equal(recorded.prepare(pic), asked.prepare(pic))
    assert Predictor.from_checkpoint(tmp_path / "recorded.ckpt", stroke_width=0).stroke_width is None
