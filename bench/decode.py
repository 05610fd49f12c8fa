"""Decode benchmark: JPEG bytes -> the 224x224 uint8 tensor vlpipe-mini takes, one core.

Contenders (each returns the same (3, 224, 224) uint8 tensor):
- vlpipe: `decode_image(data, min_side=224)` (libjpeg DCT scaling via Pillow's draft, EXIF, RGB)
  then vlpipe-mini's `preprocess` (bicubic resize to 224x224, to tensor): the pipeline's path.
- plain PIL (the baseline): `Image.open().convert("RGB").resize((224, 224))`, to tensor.
- torchvision: `torchvision.io.decode_jpeg` then an antialiased `resize`.
- simplejpeg and OpenCV, when installed: libjpeg-turbo with its own DCT scaling, the fastest
  decoders we know of for this job.

Images per second per core is measured from the thread's CPU time (`time.thread_time`), which a
busy shared machine does not inflate; wall-clock rates are recorded too. Candidates run
interleaved, round after round, and the median round counts.

    python -m bench.decode [--images 200] [--rounds 5] [--quick]
    python -m bench.decode --smoke   # 6 images from examples/, 1 round, nothing published
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from bench.common import Figure, Report, result_name
from bench.corpus import corpus_args, describe, ensure

SIZE = 224
NAME = "decode"
TITLE = "Decode: JPEG bytes to a 224x224 model input, single thread"


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def vlpipe_decode(data: bytes) -> torch.Tensor:
    from vlpipe.images.decode import decode_image
    from vlpipe.models.mini.model import preprocess_image

    return preprocess_image(decode_image(data, min_side=SIZE).image)


def vlpipe_decode_pil_resize(data: bytes) -> torch.Tensor:
    """vlpipe's decoder with the resize vlpipe-mini's preprocess used before (Pillow's bicubic):
    the "before" of the change to torch's SIMD resize."""
    from vlpipe.images.decode import decode_image

    image = decode_image(data, min_side=SIZE).image
    return _to_tensor(image.resize((SIZE, SIZE), Image.Resampling.BICUBIC))


def plain_pil(data: bytes) -> torch.Tensor:
    return _to_tensor(Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE)))


def torchvision_decode(data: bytes) -> torch.Tensor:
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2.functional import resize

    pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return resize(pixels, [SIZE, SIZE], antialias=True)


def simplejpeg_decode(data: bytes) -> torch.Tensor:
    import simplejpeg

    pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=SIZE, min_height=SIZE)
    return _to_tensor(Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BICUBIC))


def opencv_decode(data: bytes) -> torch.Tensor:
    """OpenCV's reduced decode (1/2, 1/4, 1/8 by DCT scaling) at the largest factor that keeps
    both sides >= 224; the size comes from the JPEG header, read by Pillow without decoding."""
    import cv2

    w, h = Image.open(io.BytesIO(data)).size
    flag = cv2.IMREAD_COLOR_RGB
    for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                            (2, cv2.IMREAD_REDUCED_COLOR_2)):  # fmt: skip
        if min(w, h) // factor >= SIZE:
            flag = reduced
            break
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if flag != cv2.IMREAD_COLOR_RGB:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    pixels = cv2.resize(pixels, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


CANDIDATES: dict[str, Callable[[bytes], torch.Tensor]] = {
    "vlpipe": vlpipe_decode,
    "vlpipe, Pillow resize": vlpipe_decode_pil_resize,
    "plain PIL": plain_pil,
    "torchvision": torchvision_decode,
    "simplejpeg": simplejpeg_decode,
    "OpenCV": opencv_decode,
}
DESCRIPTIONS = {
    "vlpipe": "vlpipe: decode_image (draft) + vlpipe-mini preprocess",
    "vlpipe, Pillow resize": "before: decode_image (draft) + Pillow bicubic resize",
    "plain PIL": "plain PIL: open().convert('RGB').resize((224, 224))",
    "torchvision": "torchvision.io.decode_jpeg + antialiased resize",
    "simplejpeg": "simplejpeg (libjpeg-turbo, DCT scaling) + PIL resize",
    "OpenCV": "OpenCV imdecode IMREAD_REDUCED_COLOR_N + INTER_AREA resize",
}
VLPIPE, PLAIN = "vlpipe", "plain PIL"


def available() -> dict[str, Callable[[bytes], torch.Tensor]]:
    """The candidates whose library is installed and decodes a test image correctly."""
    probe = io.BytesIO()
    Image.new("RGB", (640, 480), (10, 200, 30)).save(probe, "JPEG")
    out = {}
    for name, fn in CANDIDATES.items():
        try:
            if fn(probe.getvalue()).shape == (3, SIZE, SIZE):
                out[name] = fn
        except ImportError:
            print(f"skipped {name}: not installed", file=sys.stderr)
    return out


def time_one(fn: Callable[[bytes], torch.Tensor], images: list[bytes]) -> tuple[float, float]:
    """(CPU seconds of this thread, wall seconds) to decode every image once."""
    cpu, wall = time.thread_time(), time.perf_counter()
    for data in images:
        fn(data)
    return time.thread_time() - cpu, time.perf_counter() - wall


def fidelity(fn: Callable[[bytes], torch.Tensor], images: list[bytes]) -> float:
    """Mean absolute difference (0-255) from the plain full-resolution decode: DCT scaling must
    not make the model's input visibly worse."""
    diffs = [(fn(d).float() - plain_pil(d).float()).abs().mean().item() for d in images]
    return float(np.mean(diffs))


def measure(images: list[bytes], rounds: int) -> dict[str, dict]:
    candidates = available()
    for fn in candidates.values():  # warm-up: imports, lazy plugin loading, caches
        time_one(fn, images[:5])
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            samples[name].append(time_one(candidates[name], images))
    out = {}
    for name, runs in samples.items():
        out[name] = {
            "per_core_images_s": statistics.median(len(images) / cpu for cpu, _ in runs),
            "wall_images_s": statistics.median(len(images) / wall for _, wall in runs),
            "rounds_per_core": [round(len(images) / cpu, 1) for cpu, _ in runs],
            "mean_abs_diff_vs_plain": round(fidelity(candidates[name], images[:20]), 2),
        }
    return out


def run(n_images: int = 200, rounds: int = 5, smoke: bool = False) -> dict:
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    report = Report(result_name(NAME, smoke), TITLE)
    paths = ensure(n_images, "1024", **corpus_args(smoke))
    images = [p.read_bytes() for p in paths]
    rates = measure(images, rounds)
    vl, plain = rates[VLPIPE]["per_core_images_s"], rates[PLAIN]["per_core_images_s"]
    fastest = max(rates, key=lambda k: rates[k]["per_core_images_s"])
    report.add(Figure("decode to 224x224", vl, plain, "plain PIL", "images/s per core", goal=2.0))
    other = max(
        (k for k in rates if not k.startswith(VLPIPE)), key=lambda k: rates[k]["per_core_images_s"]
    )
    report.add(
        Figure(
            "decode to 224x224", vl, rates[other]["per_core_images_s"], other,
            "images/s per core", goal=0.8, note="the fastest other decoder installed here",
        )
    )  # fmt: skip
    report.details = {
        "corpus": describe(paths),
        "rounds": rounds,
        "fastest": fastest,
        "candidates": {k: {kk: _round(vv) for kk, vv in v.items()} for k, v in rates.items()},
    }
    return report.finish()


def _round(x):
    return round(x, 1) if isinstance(x, float) else x


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"{d['corpus']['images']} JPEGs, long side 1024 px (mean {d['corpus']['mean_megapixels']}"
        f" MP, {d['corpus']['mean_bits_per_pixel']} bits/pixel), {d['rounds']} interleaved rounds,"
        " median round; per core = images / CPU seconds of the decoding thread.",
        "",
        "| decoder | images/s per core | wall images/s | vs plain PIL | mean abs diff vs plain |",
        "|---|---|---|---|---|",
    ]
    plain = d["candidates"][PLAIN]["per_core_images_s"]
    for name, c in sorted(d["candidates"].items(), key=lambda kv: -kv[1]["per_core_images_s"]):
        bold = "**" if name == VLPIPE else ""
        lines.append(
            f"| {bold}{DESCRIPTIONS[name]}{bold} | {c['per_core_images_s']:.0f}"
            f" | {c['wall_images_s']:.0f} | {c['per_core_images_s'] / plain:.2f}x"
            f" | {c['mean_abs_diff_vs_plain']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=TITLE)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="60 images, 3 rounds")
    parser.add_argument("--smoke", action="store_true", help="6 sample images, 1 round")
    args = parser.parse_args(argv)
    n, rounds = (60, 3) if args.quick else (args.images, args.rounds)
    if args.smoke:
        n, rounds = 6, 1
    from bench.report import run_and_publish

    return run_and_publish(NAME, lambda: run(n, rounds, args.smoke), args.smoke)


if __name__ == "__main__":
    sys.exit(main())
