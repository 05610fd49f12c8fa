"""Quality signals from the pixels already decoded: no second decode, no model.

Every signal is computed on small fixed-size copies of the decoded image (a SIDE x SIDE gray copy
for the luma signals, a COLOR_SIDE x COLOR_SIDE RGB copy for colour and border; bilinear), so the
cost does not grow with the photo and the values do not depend on the size the models asked decode
for. Flags at the documented defaults (FLAGS) are what the run summary counts
and what `vlpipe curate --where` examples use; the columns themselves are the raw signals:

Columns (range: meaning):
- sharpness (0 upward): variance of the 4-neighbour Laplacian of the gray copy, luma on 0-255;
  higher is sharper (in-focus photos: hundreds to thousands, a blurred copy: a few).
- brightness (0-1): mean luma (Rec. 601).
- contrast (0-0.5): standard deviation of luma.
- colorfulness (0 to about 1.8): Hasler & Suesstrunk (2003) on 0-1 channels; 0 for gray,
  photos mostly 0.05-0.4.
- entropy (0-8): Shannon entropy of the 256-bin luma histogram in bits; flat, low-information
  images score low.
- grayscale (bool): under 1% of pixels have channels more than 3/255 apart.
- border (0-1): share of the frame that is a uniform border or letterbox bar (1.0: flat image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SIDE = (
    256  # the gray copy (Pillow's "L": Rec. 601 luma) of sharpness, brightness, contrast, entropy
)
COLOR_SIDE = 128  # the RGB copy of colorfulness, grayscale and border
GRAY_SPREAD = 3 / 255  # channels further apart than this make a pixel coloured
GRAY_SHARE = 0.01  # an image with fewer coloured pixels than this is grayscale
BORDER_TOL = 10 / 255  # a border pixel is within this of its line's mean colour (each channel)
BORDER_SHARE = 0.98  # ... and a border line has at least this share of such pixels

#: Flags at the documented defaults: every (column, op, threshold) of a flag must hold. The run
#: summary counts them; `flag_rule` writes one as a `vlpipe curate --where` condition. Blurry asks
#: for some contrast too: a dark, washed-out or flat image has a low Laplacian variance without
#: being out of focus (it has its own flag). Low information at 1.5 bits of luma is about
#: cleanvision's 3 bits over the joint RGB histogram (which adds log2(3) for the channel).
FLAGS: dict[str, tuple[tuple[str, str, float], ...]] = {
    "blurry": (("sharpness", "<", 10.0), ("contrast", ">=", 0.05)),
    "dark": (("brightness", "<", 0.2),),
    "bright": (("brightness", ">", 0.9),),
    "low-information": (("entropy", "<", 1.5),),
    "grayscale": (("grayscale", "=", True),),
}


@dataclass(frozen=True)
class Quality:
    """The signals of one image, and the box inside its uniform border (fractions of the frame:
    left, top, right, bottom) that the perceptual hash is computed on."""

    sharpness: float
    brightness: float
    contrast: float
    colorfulness: float
    entropy: float
    grayscale: bool
    border: float
    inner: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    def columns(self) -> dict:
        """The values as the Parquet columns hold them."""
        return {name: getattr(self, name) for name in COLUMNS}


COLUMNS = ("sharpness", "brightness", "contrast", "colorfulness", "entropy", "grayscale", "border")


def quality(image: Image.Image) -> Quality:
    """All signals of one RGB image, from its two small copies."""
    image = image.convert("RGB")
    gray = image.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    luma8 = np.asarray(gray)
    y = luma8.astype(np.float32)
    rgb = np.asarray(image.resize((COLOR_SIDE, COLOR_SIDE), Image.Resampling.BILINEAR))
    x = rgb.astype(np.float32) * (1 / 255)
    inner, border = border_box(x)
    return Quality(
        sharpness=sharpness(y),
        brightness=float(y.mean()) / 255,
        contrast=float(y.std()) / 255,
        colorfulness=colorfulness(x),
        entropy=entropy(luma8),
        grayscale=is_grayscale(x),
        border=border,
        inner=inner,
    )


def sharpness(y: np.ndarray) -> float:
    """Variance of the Laplacian (0 -1 0 / -1 4 -1 / 0 -1 0) over the interior of float luma
    on 0-255."""
    lap = 4 * y[1:-1, 1:-1]
    for shifted in (y[:-2, 1:-1], y[2:, 1:-1], y[1:-1, :-2], y[1:-1, 2:]):
        lap -= shifted
    return float(lap.var())


def colorfulness(x: np.ndarray) -> float:
    """Hasler & Suesstrunk: spread and mean of the opponent channels rg and yb."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    spread = np.sqrt(rg.var() + yb.var())
    mean = np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return float(spread + 0.3 * mean)


def entropy(luma8: np.ndarray) -> float:
    """Shannon entropy of the 256-bin histogram of 8-bit luma, in bits (0: one value; 8: every
    value equally often)."""
    counts = np.bincount(luma8.ravel(), minlength=256)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def is_grayscale(x: np.ndarray) -> bool:
    """Almost every pixel has its three channels within GRAY_SPREAD (JPEG leaves a little
    chroma noise in gray photos saved as RGB; a sepia or tinted photo is not gray)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    spread = np.maximum(np.maximum(np.abs(r - g), np.abs(g - b)), np.abs(r - b))
    return bool((spread > GRAY_SPREAD).mean() < GRAY_SHARE)


def border_box(x: np.ndarray) -> tuple[tuple[float, float, float, float], float]:
    """(inner box as fractions, border share): rows from the top and bottom, then columns from
    the left and right inside them, that are uniform lines of one colour. A flat image is all
    border (share 1.0) and keeps the whole frame as its box."""
    h, w = x.shape[:2]
    top = _uniform_lines(x)
    bottom = _uniform_lines(x[::-1])
    if top + bottom >= h:
        return (0.0, 0.0, 1.0, 1.0), 1.0
    middle = x[top : h - bottom].transpose(1, 0, 2)
    left = _uniform_lines(middle)
    right = _uniform_lines(middle[::-1])
    if left + right >= w:
        return (0.0, 0.0, 1.0, 1.0), 1.0
    inner = (left / w, top / h, 1 - right / w, 1 - bottom / h)
    share = 1.0 - (inner[2] - inner[0]) * (inner[3] - inner[1])
    return inner, float(share)


def _uniform_lines(x: np.ndarray) -> int:
    """How many lines (rows of x) from the first on match the first line's mean colour. Most
    photos have none, so the first line is checked alone before the rest."""
    ref = x[0].mean(axis=0)
    if not _near(x[:1], ref)[0]:
        return 0
    near = _near(x, ref)
    return len(near) if near.all() else int(np.argmin(near))


def _near(lines: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (np.abs(lines - ref).max(axis=-1) <= BORDER_TOL).mean(axis=1) >= BORDER_SHARE


def flagged(name: str, columns: dict[str, np.ndarray]) -> np.ndarray:
    """Rows a flag of FLAGS marks, from its columns' values (NaN/None: not flagged)."""
    ops = {"<": np.less, ">": np.greater, ">=": np.greater_equal, "=": np.equal}
    out = None
    for column, op, threshold in FLAGS[name]:
        v = np.atleast_1d(np.asarray(columns[column], dtype=np.float64))
        hit = ops[op](v, float(threshold)) & ~np.isnan(v)
        out = hit if out is None else out & hit
    return out


def flag_rule(name: str) -> str:
    """The flag as a filter: `sharpness < 10.0 AND contrast >= 0.05`."""
    return " AND ".join(f"{c} {op} {str(t).upper() if isinstance(t, bool) else t}"
                        for c, op, t in FLAGS[name])  # fmt: skip


def flag_counts(rows: list[dict]) -> dict[str, int]:
    """How many of these result rows each flag of FLAGS marks (rows without signals: none)."""
    if not rows:
        return dict.fromkeys(FLAGS, 0)
    columns = {c: np.array([np.nan if r.get(c) is None else float(r[c]) for r in rows])
               for c in COLUMNS}  # fmt: skip
    return {name: int(flagged(name, columns).sum()) for name in FLAGS}
