"""Generate the embedded sample: hiragana rendered from free Japanese fonts, made to look
handwritten and scanned, stored as genuine ETL8G records. It is NOT ETL data.

    python -m maist.data.sample.generate [--out PATH] [--writers N] [--seed S]

Each "writer" (one sheet number) is one font with one random style (size, stroke width,
slant, ink darkness, paper shade). Each character then gets its own random affine and a mild
elastic distortion, scanner-like noise, and is quantised to ETL8G's 16 grey levels
(0 = paper, 15 = darkest ink) in the 128 × 127 frame. Records of one writer follow each
other in kana-table order; the writers are split across the members ETL8G_01 and ETL8G_02
of a zip. The output depends only on the seed, the writer count and the installed fonts.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from maist.data.etl import ETL8G, pack_records, read_etl
from maist.data.kana import HIRAGANA71, char_to_jis, class_set
from maist.data.sample import SAMPLE_ZIP
from maist.files import write_atomic

DEFAULT_SEED = 0
DEFAULT_WRITERS = 60
FIRST_SHEET = 9001  # far above real ETL8G sheet numbers, so they never clash
MEMBERS = ("ETL8G_01", "ETL8G_02")  # writers are split in halves across these
CLASS_SET = "hiragana75"
ZIP_DATE = (2024, 1, 1, 0, 0, 0)  # fixed member timestamps: same seed, same zip bytes
SUPERSAMPLE = 2  # render and warp at 2× resolution, then average down

# Per writer (one draw per sheet).
HEIGHT_PX = (60.0, 78.0)  # height of a full-size kana, in output pixels
STROKE_DELTA = (-1, 2)  # integer; <0 erodes, >0 thickens by that many supersampled px a side
SLANT = (-0.12, 0.12)  # habitual horizontal shear of the writer
INK_PEAK = (10.0, 15.0)  # grey level of the stroke centres
INK_GAIN = (1.0, 1.8)  # >1 sharpens the anti-aliased stroke edges into darker, harder ones
PAPER_LEVEL = (0, 1)  # integer grey level of the paper (noise adds one level here and there)

# Per character.
ROTATE_DEG = 8.0  # ± rotation
SCALE = (0.92, 1.08)  # size relative to the writer's
ASPECT = 0.06  # ± relative change of width against height
SHEAR = 0.08  # ± shear on top of the writer's slant
SHIFT_PX = 5.0  # ± offset from the centre, output pixels
ELASTIC_GRID = 4  # control points per side of the elastic field
ELASTIC_PX = 2.0  # std of the control-point displacements, output pixels
PRESSURE = (0.85, 1.0)  # ink darkness relative to the writer's peak

# Scanner.
INK_GRAIN = 0.08  # multiplicative grain inside the strokes
PAPER_NOISE_RATE = 0.008  # share of paper pixels one level darker
SPECK_RATE = 2e-4  # share of pixels with a dark speck of dust
SPECK_LEVEL = (2.0, 7.0)  # levels a speck adds


@dataclass(frozen=True)
class Font:
    name: str
    package: str  # the Debian package that ships it
    file: str
    index: int = 0  # face inside a .ttc collection


# Handwriting-style fonts first, then printed ones; writer w uses FONTS[w % len(FONTS)].
# Every entry's licence allows redistributing images rendered with it (see README.md);
# check the licence before adding one.
FONTS = (
    Font("Klee One Regular", "fonts-klee", "KleeOne-Regular.ttf"),
    Font("Seto Font", "fonts-seto", "setofont.ttf"),
    Font("Kiloji", "fonts-kiloji", "kiloji.ttf"),
    Font("YOzFont C (cute kana)", "fonts-yozvox-yozfont-cute", "YOzRC_.ttf"),
    Font("YOzFont E (educational kana)", "fonts-yozvox-yozfont-edu", "YOzRE_.ttf"),
    Font("YOzFont A (antique kana)", "fonts-yozvox-yozfont-antique", "YOzRA_.ttf"),
    Font("YOzFont N (new kana)", "fonts-yozvox-yozfont-new-kana", "YOzRN_.ttf"),
    Font("YOzFont S (standard kana)", "fonts-yozvox-yozfont-standard-kana", "YOzRS_.ttf"),
    Font("Klee One SemiBold", "fonts-klee", "KleeOne-SemiBold.ttf"),
    Font("IPAMincho", "fonts-ipafont-mincho", "ipam.ttf"),
    Font("IPAGothic", "fonts-ipafont-gothic", "ipag.ttf"),
    Font("Noto Sans CJK JP", "fonts-noto-cjk", "NotoSansCJK-Regular.ttc", 0),
)
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
INSTALL_HINT = "sudo apt-get install " + " ".join(sorted({f.package for f in FONTS}))


# ---------------------------------------------------------------- fonts


def _font_files() -> dict[str, Path]:
    """Every font file fontconfig or the usual font folders know, by file name."""
    paths = []
    try:
        out = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True).stdout
        paths += [Path(line.split(":")[0].strip()) for line in out.splitlines() if line.strip()]
    except OSError:
        pass  # no fontconfig: the folders below still count
    for folder in FONT_DIRS:
        folder = Path(folder).expanduser()
        if folder.is_dir():
            suffixes = (".ttf", ".otf", ".ttc")
            paths += sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes)
    found: dict[str, Path] = {}
    for path in paths:
        found.setdefault(path.name, path)
    return found


def _covers(font: ImageFont.FreeTypeFont, chars: str) -> bool:
    """Whether the font has a glyph of its own (not .notdef, not blank) for every character."""

    def drawn(char: str) -> bytes:
        image = Image.new("L", (2 * font.size, 2 * font.size), 0)
        ImageDraw.Draw(image).text((font.size // 2, font.size // 2), char, font=font, fill=255)
        return image.tobytes()

    missing = drawn("\U0010fffd")
    return all(any(glyph) and glyph != missing for glyph in map(drawn, chars))


def find_fonts(chars: str) -> list[tuple[Font, Path]]:
    """The FONTS installed here that cover ``chars``; exits with advice if there are none."""
    files = _font_files()
    usable = []
    for font in FONTS:
        path = files.get(font.file)
        if path is None:
            print(f"note: {font.name} ({font.file}, Debian package {font.package}) not found")
        elif not _covers(ImageFont.truetype(str(path), 32, index=font.index), chars):
            print(f"note: {font.name} ({path}) lacks some hiragana; skipped")
        else:
            usable.append((font, path))
    if 0 < len(usable) < len(FONTS):
        print("note: with fonts missing, the output differs from the shipped sample")
    if not usable:
        try:
            other = subprocess.run(["fc-list", ":lang=ja", "file"], capture_output=True, text=True).stdout.splitlines()
        except OSError:
            other = []
        raise SystemExit(
            "error: no Japanese font from the vetted list is installed, so the sample cannot be "
            f"generated.\nInstall them with:\n  {INSTALL_HINT}\n"
            + (
                f"Other Japanese fonts are installed ({len(other)}), but only fonts whose licence "
                "allows redistributing rendered images may be used: check one's licence and add "
                "it to FONTS in maist/data/sample/generate.py."
                if other
                else "fontconfig lists no Japanese font at all (fc-list :lang=ja)."
            )
        )
    return usable


def _full_height(font: ImageFont.FreeTypeFont) -> float:
    """Median ink height of the full-size kana at this font's size, in pixels."""
    heights = [font.getbbox(c)[3] - font.getbbox(c)[1] for c in HIRAGANA71]
    return float(np.median(heights))


# ---------------------------------------------------------------- one writer


def _render(font: ImageFont.FreeTypeFont, char: str, stroke: int) -> np.ndarray:
    """The glyph as ink coverage 0..1, centred on its ink box, at supersampled resolution."""
    h, w = ETL8G.height * SUPERSAMPLE, ETL8G.width * SUPERSAMPLE
    size = font.size * 2
    glyph = Image.new("L", (size, size), 0)
    ImageDraw.Draw(glyph).text(
        (size // 4, size // 4),
        char,
        font=font,
        fill=255,
        stroke_width=max(stroke, 0),
        stroke_fill=255,
    )
    if stroke < 0:
        for _ in range(-stroke):
            glyph = glyph.filter(ImageFilter.MinFilter(3))  # erode one pixel a side
    glyph = glyph.crop(glyph.getbbox())
    canvas = Image.new("L", (w, h), 0)
    canvas.paste(glyph, ((w - glyph.width) // 2, (h - glyph.height) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _warp_grids(rng: np.random.Generator, n: int, slant: float) -> torch.Tensor:
    """(n, H, W, 2) sampling grids: a random affine and a smooth elastic field per character."""
    h, w = ETL8G.height * SUPERSAMPLE, ETL8G.width * SUPERSAMPLE
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.stack([xs + 0.5 - w / 2, ys + 0.5 - h / 2], axis=-1)  # pixel centres, origin mid-frame
    grids = np.empty((n, h, w, 2), dtype=np.float32)
    for i in range(n):
        angle = np.deg2rad(rng.uniform(-ROTATE_DEG, ROTATE_DEG))
        scale = rng.uniform(*SCALE)
        aspect = 1.0 + rng.uniform(-ASPECT, ASPECT)
        shear = slant + rng.uniform(-SHEAR, SHEAR)
        shift = rng.uniform(-SHIFT_PX, SHIFT_PX, size=2) * SUPERSAMPLE
        rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        forward = rotate @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([scale * aspect, scale])
        # Where each output pixel comes from: invert the forward map (source → output).
        grids[i] = (out - shift) @ np.linalg.inv(forward).T
    coarse = rng.normal(0.0, ELASTIC_PX * SUPERSAMPLE, size=(n, 2, ELASTIC_GRID, ELASTIC_GRID))
    field = F.interpolate(torch.from_numpy(coarse).float(), size=(h, w), mode="bicubic", align_corners=True)
    grid = torch.from_numpy(grids) + field.permute(0, 2, 3, 1)
    return grid / torch.tensor([w / 2, h / 2])  # pixels → grid_sample's -1..1


def make_writer(font: ImageFont.FreeTypeFont, chars: str, rng: np.random.Generator) -> np.ndarray:
    """(len(chars), 127, 128) uint8 levels 0..15: one writer's sheet."""
    n = len(chars)
    target = rng.uniform(*HEIGHT_PX) * SUPERSAMPLE
    sized = font.font_variant(size=round(font.size * target / _full_height(font)))
    stroke = int(rng.integers(STROKE_DELTA[0], STROKE_DELTA[1] + 1))
    slant, peak, gain = rng.uniform(*SLANT), rng.uniform(*INK_PEAK), rng.uniform(*INK_GAIN)
    paper_level = int(rng.integers(PAPER_LEVEL[0], PAPER_LEVEL[1] + 1))

    glyphs = torch.from_numpy(np.stack([_render(sized, c, stroke) for c in chars]))[:, None]
    grid = _warp_grids(rng, n, slant)
    warped = F.grid_sample(glyphs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ink = F.avg_pool2d(warped, SUPERSAMPLE)[:, 0].numpy().astype(np.float64)
    ink = np.clip(ink * gain, 0.0, 1.0)

    shape = ink.shape
    # Paper: a light, even shade with sparse one-level noise (noise costs zip bytes).
    paper = paper_level + (rng.random(shape) < PAPER_NOISE_RATE)
    # Ink: the writer's darkness times a per-character pressure, with grain.
    pressure = rng.uniform(*PRESSURE, size=(n, 1, 1))
    grain = 1.0 - INK_GRAIN * rng.random(shape)
    levels = paper + ink * (peak * pressure * grain - paper)
    levels += rng.uniform(*SPECK_LEVEL, size=shape) * (rng.random(shape) < SPECK_RATE)
    return np.clip(np.rint(levels), 0, ETL8G.max_level).astype(np.uint8)


# ---------------------------------------------------------------- the zip


def generate(out: Path, writers: int, seed: int) -> None:
    chars = "".join(class_set(CLASS_SET).classes)
    fonts = find_fonts(chars)
    jis = np.array([char_to_jis(c) for c in chars])
    loaded = [(f, ImageFont.truetype(str(path), 100, index=f.index)) for f, path in fonts]

    sheets, used = [], {}
    for w in range(writers):
        font, face = loaded[w % len(loaded)]
        rng = np.random.default_rng([seed, w])  # per writer: adding writers keeps the others
        sheets.append(make_writer(face, chars, rng))
        used[font] = used.get(font, 0) + 1

    half = (writers + 1) // 2
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for member, part in zip(MEMBERS, (range(half), range(half, writers))):
            if not part:
                continue
            images = np.concatenate([sheets[w] for w in part])
            sheet = np.repeat(np.array([FIRST_SHEET + w for w in part]), len(chars))
            serial = np.arange(part.start * len(chars), part.stop * len(chars)) + 1
            data = pack_records(images, np.tile(jis, len(part)), sheet, serial)
            info = zipfile.ZipInfo(member, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    write_atomic(out, buf.getvalue())

    records = read_etl(out)
    assert len(records) == writers * len(chars) and len(set(records.jis.tolist())) == len(chars)
    for font, count in used.items():
        print(f"  {count:3d} writers  {font.name}  ({font.package})")
    print(
        f"wrote {out}: {len(records):,} records, {writers} writers (sheets {FIRST_SHEET}–"
        f"{FIRST_SHEET + writers - 1}), {len(chars)} classes, seed {seed}, "
        f"{out.stat().st_size / 1e6:.2f} MB"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maist.data.sample.generate", description=__doc__.split("\n\n")[0])
    arg = parser.add_argument
    arg("--out", type=Path, default=SAMPLE_ZIP, help="zip to write (default: %(default)s)")
    arg("--writers", type=int, default=DEFAULT_WRITERS, help="sheets (default: %(default)s)")
    arg("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 1 <= args.writers <= 0xFFFF - FIRST_SHEET:  # sheet numbers are uint16
        parser.error(f"--writers must lie in 1..{0xFFFF - FIRST_SHEET}")
    generate(args.out, args.writers, args.seed)


if __name__ == "__main__":
    main()
