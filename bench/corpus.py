"""Deterministic benchmark corpora: N realistic JPEGs made from the Flickr8k development copy.

Why generate: the shared Flickr8k copy is 224x224 at quality 85, far smaller and cheaper to decode
than what users feed vlpipe (phone and web photos of 0.5-2 MP). Each benchmark image is a Flickr8k
photo cropped to a random aspect ratio, flipped half the time, UPSCALED (bicubic) so its long side
is 640-1600 px, given a light luminance grain and saved at quality 90. The grain matters: an
upscaled 224 px image is so smooth that its JPEG is ~1.1 bits/pixel and decodes faster than a real
photo; sigma-4 grain brings it to ~2 bits/pixel, the range of real photos at quality 90.

Image i depends only on (seed, i), so the 2k corpus is the first 2k images of the 10k corpus and a
corpus is generated once, on demand, into bench/corpus/ (git-ignored) and reused.

    python -m bench.corpus 2000            # bench/corpus/mixed/000000.jpg ... 001999.jpg
    python -m bench.corpus 500 --kind 1024 # long side exactly 1024 px (the decode benchmark)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FLICKR = Path(os.environ.get("VLPIPE_FLICKR", REPO.parent / "shared" / "datasets" / "flickr8k"))
CACHE = REPO / "bench" / "corpus"
#: smoke runs make their (tiny) corpora from the repository's sample photos: no Flickr8k needed
SMOKE = {"cache": REPO / "bench" / "results" / "tmp" / "corpus-smoke", "root": REPO / "examples"}

#: (width, height) ratios and how often each occurs: mostly landscape, as in photo collections
ASPECTS = [((4, 3), 4), ((3, 2), 3), ((16, 9), 2), ((1, 1), 2), ((3, 4), 3), ((2, 3), 2)]


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    long_side: tuple[int, int]  # inclusive range of the long side in pixels
    quality: int = 90
    grain: float = 4.0  # std of the luminance noise, in 0-255 units
    seed: int = 0


SPECS = {
    "mixed": CorpusSpec("mixed", (640, 1600)),
    "1024": CorpusSpec("1024", (1024, 1024)),
}


class CorpusError(Exception):
    """The corpus cannot be made (no dataset); one line for the user."""


def source_images(root: Path = FLICKR) -> list[Path]:
    folder = root / "images"
    if not folder.is_dir():
        raise CorpusError(
            f"benchmark corpora are made from the Flickr8k copy at {folder}, which is absent;"
            " set VLPIPE_FLICKR to a folder holding images/*.jpg"
        )
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise CorpusError(f"no .jpg files in {folder}")
    return files


def target_size(rng: np.random.Generator, spec: CorpusSpec) -> tuple[int, int]:
    ratios, weights = zip(*ASPECTS, strict=True)
    w, h = ratios[rng.choice(len(ratios), p=np.array(weights) / sum(weights))]
    long_side = int(rng.integers(spec.long_side[0], spec.long_side[1] + 1))
    if w >= h:
        return long_side, max(1, round(long_side * h / w))
    return max(1, round(long_side * w / h)), long_side


def make_image(spec: CorpusSpec, index: int, sources: list[Path]) -> bytes:
    """The JPEG bytes of image `index`: a pure function of (spec, index, the source files)."""
    rng = np.random.default_rng([spec.seed, index])
    with Image.open(sources[int(rng.integers(len(sources)))]) as src:
        src = src.convert("RGB")
    width, height = target_size(rng, spec)
    src = src.crop(_crop_box(rng, src.size, width / height))
    if rng.random() < 0.5:
        src = src.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(src.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    if spec.grain:
        noise = rng.standard_normal((height, width), dtype=np.float32) * spec.grain
        pixels = pixels + noise[..., None]
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)).save(
        out, "JPEG", quality=spec.quality
    )
    return out.getvalue()


def _crop_box(rng: np.random.Generator, size: tuple[int, int], aspect: float) -> tuple[int, ...]:
    """A random crop of 70-100% of the largest box of the wanted aspect ratio inside `size`."""
    sw, sh = size
    cw, ch = (sw, sw / aspect) if sw / sh <= aspect else (sh * aspect, sh)
    scale = rng.uniform(0.7, 1.0)
    cw, ch = max(8, int(cw * scale)), max(8, int(ch * scale))
    x, y = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    return x, y, x + cw, y + ch


def corpus_dir(spec: CorpusSpec, cache: Path = CACHE) -> Path:
    return cache / spec.name


def image_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.jpg"


def corpus_args(smoke: bool) -> dict:
    """Keyword arguments of `ensure` and `manifest`: the smoke corpus, or the default one."""
    return dict(SMOKE) if smoke else {}


def ensure(
    n: int,
    kind: str = "mixed",
    cache: Path = CACHE,
    workers: int | None = None,
    root: Path = FLICKR,
) -> list[Path]:
    """The first `n` images of corpus `kind`, generating the missing ones (in parallel) from the
    photos in `root`/images."""
    spec = SPECS[kind]
    folder = corpus_dir(spec, cache)
    _check_stamp(folder, spec)
    paths = [image_path(folder, i) for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if missing:
        sources = source_images(root)
        print(
            f"corpus {kind}: generating {len(missing)} of {n} images in {folder}", file=sys.stderr
        )
        workers = workers or os.cpu_count() or 1
        with ProcessPoolExecutor(workers) as pool:
            chunk = max(1, len(missing) // (workers * 8))
            list(
                pool.map(_write_one, [(spec, i, sources, folder) for i in missing], chunksize=chunk)
            )
    return paths


def _write_one(args: tuple[CorpusSpec, int, list[Path], Path]) -> None:
    spec, index, sources, folder = args
    path = image_path(folder, index)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(make_image(spec, index, sources))
    os.replace(tmp, path)  # a killed generator never leaves a half-written image behind


def _check_stamp(folder: Path, spec: CorpusSpec) -> None:
    """A cache made with other settings (or another Pillow encoder) is discarded, not mixed in."""
    import PIL

    stamp = {**asdict(spec), "pillow": PIL.__version__}
    path = folder / "corpus.json"
    if path.exists() and json.loads(path.read_text()) != json.loads(json.dumps(stamp)):
        for old in folder.glob("*.jpg"):
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamp, indent=1))


def manifest(n: int, kind: str = "mixed", cache: Path = CACHE, root: Path = FLICKR) -> Path:
    """A CSV manifest (uri column) of the first `n` images: `vlpipe run` takes it as a source."""
    paths = ensure(n, kind, cache, root=root)
    out = cache / f"{kind}-{n}.csv"
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri"])
        writer.writerows([str(p)] for p in paths)
    return out


def describe(paths: list[Path]) -> dict:
    """Sizes and bits per pixel of a corpus, recorded beside every figure measured on it."""
    sides, pixels, nbytes = [], [], []
    for p in paths:
        with Image.open(p) as im:
            w, h = im.size
        sides.append(max(w, h))
        pixels.append(w * h)
        nbytes.append(p.stat().st_size)
    return {
        "images": len(paths),
        "long_side_px": [int(min(sides)), int(max(sides))],
        "mean_megapixels": round(float(np.mean(pixels)) / 1e6, 3),
        "mean_bits_per_pixel": round(8 * float(np.sum(nbytes)) / float(np.sum(pixels)), 2),
        "total_mb": round(float(np.sum(nbytes)) / 1e6, 1),
        "made_from": "Flickr8k 224x224 photos, cropped, flipped, upscaled, sigma-4 grain, q90",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.corpus", description=__doc__.split("\n")[0]
    )
    parser.add_argument("n", type=int, help="number of images")
    parser.add_argument("--kind", choices=sorted(SPECS), default="mixed")
    args = parser.parse_args(argv)
    try:
        paths = ensure(args.n, args.kind)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"folder": str(paths[0].parent), **describe(paths)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
