"""Quality signals from the pixels already decoded: no second decode, no model.

Every signal is computed on one small fixed-size copy of the decoded image, made once: an integer
box reduction (Pillow's `reduce`, exact averages of k x k blocks) to between SIDE and 2 x SIDE
pixels on the short side, then every other pixel or so picked to SIDE x SIDE (nearest). The
values do not depend much on the size the models asked decode for, and the cost stays a few
hundred microseconds whatever the photo: a smoothing resample of the whole image would cost more
than all the signals together. Then integer arithmetic on that copy: the luma signals from its
256-bin histogram, colour from its opponent channels, the border from its edge lines. Flags at
the documented defaults (FLAGS) are what the run summary counts and what `vlpipe curate
--where` examples use; the columns themselves are the raw signals:

Columns (range: meaning):
- sharpness (0 upward): variance of the 4-neighbour Laplacian of the copy's luma (0-255);
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

__all__ = [
    "COLUMNS",
    "FLAGS",
    "Quality",
    "border_box",
    "colorfulness",
    "entropy",
    "flag_counts",
    "flag_rule",
    "flagged",
    "is_grayscale",
    "quality",
    "sharpness",
]

SIDE = 128  # the copy every signal is computed on: SIDE x SIDE RGB, and its luma (Pillow's "L")
GRAY_SPREAD = 3  # channels (0-255) further apart than this make a pixel coloured
GRAY_SHARE = 0.01  # an image with fewer coloured pixels than this is grayscale
BORDER_TOL = 10  # a border pixel is within this (0-255) of its line's mean colour, each channel
BORDER_SHARE = 0.98  # ... and a border line has at least this share of such pixels
_LEVELS = np.arange(256, dtype=np.float64)

#: Flags at the documented defaults: every (column, op, threshold) of a flag must hold. The run
#: summary counts them; `flag_rule` writes one as a `vlpipe curate --where` condition. Blurry asks
#: for some contrast too: a dark, washed-out or flat image has a low Laplacian variance without
#: being out of focus (it has its own flag). Low information at 1.5 bits of luma is about
#: cleanvision's 3 bits over the joint RGB histogram (which adds log2(3) for the channel).
FLAGS: dict[str, tuple[tuple[str, str, float], ...]] = {
    "blurry": (("sharpness", "<", 50.0), ("contrast", ">=", 0.05)),
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
    """All signals of one image, from its small copy."""
    small = small_copy(image)
    rgb = np.asarray(small)
    luma8 = np.asarray(small.convert("L"))
    counts = np.bincount(luma8.ravel(), minlength=256)
    brightness, contrast = luma_moments(counts)
    inner, border = border_box(rgb)
    return Quality(
        sharpness=sharpness(luma8),
        brightness=brightness,
        contrast=contrast,
        colorfulness=colorfulness(rgb),
        entropy=entropy(counts),
        grayscale=is_grayscale(rgb),
        border=border,
        inner=inner,
    )


def small_copy(image: Image.Image) -> Image.Image:
    """SIDE x SIDE RGB: box-reduced by the whole factor that keeps the short side >= SIDE, then
    nearest-sampled (a smoothing resample of the full image would cost more than the signals);
    an image smaller than that is enlarged bilinearly."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    factor = min(image.size) // SIDE
    if factor >= 2:
        image = image.reduce(factor)
    if min(image.size) < SIDE:  # a small image, enlarged: smoothly, not by repeating lines
        return image.resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return image.resize((SIDE, SIDE), Image.Resampling.NEAREST)


def sharpness(luma8: np.ndarray) -> float:
    """Variance of the Laplacian (0 -1 0 / -1 4 -1 / 0 -1 0) over the interior of 8-bit luma
    (int16 holds it exactly: -1020 to 1020)."""
    y = luma8.astype(np.int16)
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return _mean_var(lap)[1]


def _mean_var(values: np.ndarray) -> tuple[float, float]:
    """Mean and variance of integer values, through one float32 copy (arrays of a SIDE x SIDE
    copy stay small: numpy's temporaries of 128 KiB or more cost a fresh mapping each)."""
    f = values.astype(np.float32).ravel()
    if not f.size:
        return 0.0, 0.0
    mean = float(f.sum(dtype=np.float64)) / f.size
    return mean, max(float(f @ f) / f.size - mean * mean, 0.0)


def luma_moments(counts: np.ndarray) -> tuple[float, float]:
    """(mean, standard deviation) of luma on 0-1, from its 256-bin histogram."""
    n = counts.sum()
    mean = float(counts @ _LEVELS) / n
    var = max(float(counts @ (_LEVELS * _LEVELS)) / n - mean * mean, 0.0)
    return mean / 255, var**0.5 / 255


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk on 0-1 channels: spread and mean of the opponent channels rg = r - g
    and yb = (r + g) / 2 - b (here 2 * yb, in int16 on 0-255, scaled at the end)."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    rg_mean, rg_var = _mean_var(r - g)
    yb2_mean, yb2_var = _mean_var(r + g - 2 * b)
    spread = (rg_var + yb2_var / 4) ** 0.5
    return (spread + 0.3 * (rg_mean**2 + (yb2_mean / 2) ** 2) ** 0.5) / 255


def entropy(counts: np.ndarray) -> float:
    """Shannon entropy of the 256-bin histogram of 8-bit luma, in bits (0: one value; 8: every
    value equally often)."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def is_grayscale(rgb: np.ndarray) -> bool:
    """Almost every pixel has its three channels within GRAY_SPREAD (JPEG leaves a little
    chroma noise in gray photos saved as RGB; a sepia or tinted photo is not gray)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return bool(np.count_nonzero(spread > GRAY_SPREAD) < GRAY_SHARE * spread.size)


def border_box(rgb: np.ndarray) -> tuple[tuple[float, float, float, float], float]:
    """(inner box as fractions, border share): rows from the top and bottom, then columns from
    the left and right inside them, that are uniform lines of one colour. A flat image is all
    border (share 1.0) and keeps the whole frame as its box. Most photos have no uniform edge
    line, which one look at the four edges settles."""
    edges = np.stack([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    if not _near(edges, edges.mean(axis=1, keepdims=True)).any():
        return (0.0, 0.0, 1.0, 1.0), 0.0
    h, w = rgb.shape[:2]
    top = _uniform_lines(rgb)
    bottom = _uniform_lines(rgb[::-1])
    if top + bottom >= h:
        return (0.0, 0.0, 1.0, 1.0), 1.0
    middle = rgb[top : h - bottom].transpose(1, 0, 2)
    left = _uniform_lines(middle)
    right = _uniform_lines(middle[::-1])
    if left + right >= w:
        return (0.0, 0.0, 1.0, 1.0), 1.0
    inner = (left / w, top / h, 1 - right / w, 1 - bottom / h)
    share = 1.0 - (inner[2] - inner[0]) * (inner[3] - inner[1])
    return inner, float(share)


def _uniform_lines(x: np.ndarray, chunk: int = 32) -> int:
    """How many lines (rows of x) from the first on match the first line's mean colour, looked
    at `chunk` lines at a time (a border is seldom more than a chunk deep)."""
    ref = x[0].mean(axis=0, dtype=np.float32)
    for start in range(0, len(x), chunk):
        near = _near(x[start : start + chunk], ref)
        if not near.all():
            return start + int(np.argmin(near))
    return len(x)


def _near(lines: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per line: at least BORDER_SHARE of its pixels within BORDER_TOL of `ref` in each channel
    (channels combined one by one: numpy reduces a length-3 axis slowly)."""
    close = np.abs(lines - ref) <= BORDER_TOL
    ok = close[..., 0] & close[..., 1] & close[..., 2]
    return np.count_nonzero(ok, axis=-1) >= BORDER_SHARE * ok.shape[-1]


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
    """The flag as a filter: `sharpness < 50.0 AND contrast >= 0.05`."""
    return " AND ".join(f"{c} {op} {str(t).upper() if isinstance(t, bool) else t}"
                        for c, op, t in FLAGS[name])  # fmt: skip


def flag_counts(rows: list[dict]) -> dict[str, int]:
    """How many of these result rows each flag of FLAGS marks (rows without signals: none)."""
    if not rows:
        return dict.fromkeys(FLAGS, 0)
    columns = {c: np.array([np.nan if r.get(c) is None else float(r[c]) for r in rows])
               for c in COLUMNS}  # fmt: skip
    return {name: int(flagged(name, columns).sum()) for name in FLAGS}
