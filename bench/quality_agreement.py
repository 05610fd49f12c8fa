"""vlpipe's quality flags against cleanvision's, on Flickr8k dev photos and degraded copies.

Set (made once under bench/results/tmp/quality_agreement/): N dev photos and five copies of each,
made to have one issue, each strongly enough that cleanvision's defaults flag it: blurred
(Gaussian, radius 10: cleanvision judges blur on a 64 px copy), darkened (brightness x0.15),
brightened (blended 95% toward white), flat (blended 99% toward its mean colour: low
information), grayscale (saved as a one-channel JPEG).

Compared per issue type (cleanvision's name / vlpipe's flag at its documented default, FLAGS in
vlpipe/images/quality.py): dark / dark, light / bright, blurry / blurry, low_information /
low-information, grayscale / grayscale. Agreement = the share of all images (photos and copies)
on which both say the same; goal >= 0.9 per type.

Cost (unless --no-timing): cleanvision's `Imagelab.find_issues` over the folder, in its own venv
(bench/.venv-cleanvision, git-ignored, made on first use: cleanvision's pandas/matplotlib stack
stays out of vlpipe's environment), against vlpipe's extra time for the signals: `quality()` on
the images as vlpipe's decoder gives them (decode not counted: the pipeline decodes anyway), one
thread. Goal: vlpipe's extra time at least 5x less. Also the signals' share of a default
`vlpipe run` over the photos (goal <= 5%): the same `quality()` time against the run's wall time.

    python -m bench.quality_agreement [--photos 100] [--no-timing] [--smoke]

Skips (exit 0, one line) where the Flickr8k copy at ../shared/datasets/flickr8k is absent.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, SCRATCH, Figure, Report, run_child

NAME = "quality_agreement"
FLICKR = REPO.parent / "shared" / "datasets" / "flickr8k"
ROOT = SCRATCH / NAME
VENV = REPO / "bench" / ".venv-cleanvision"
PINS = ["cleanvision==0.3.7"]
#: cleanvision's issue type -> vlpipe's flag
ISSUES = {
    "dark": "dark",
    "light": "bright",
    "blurry": "blurry",
    "low_information": "low-information",
    "grayscale": "grayscale",
}
COPIES = ("blurred", "dark", "bright", "flat", "gray")

CLEANVISION_CHILD = """
import json, sys, time
from cleanvision import Imagelab
folder, issues = sys.argv[1], sys.argv[2].split(",")
start = time.perf_counter()
lab = Imagelab(data_path=folder)
lab.find_issues({name: {} for name in issues}, n_jobs=1)
seconds = time.perf_counter() - start
table = lab.issues
flags = {name: {p.rsplit("/", 1)[-1]: bool(v) for p, v in table[f"is_{name}_issue"].items()}
         for name in issues}
print(json.dumps({"seconds": seconds, "flags": flags}))
"""


def cleanvision_python() -> Path:
    """The cleanvision venv's Python, making the venv first if it is missing."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], check=True)
    return python


def degrade(image, how: str):
    from PIL import Image, ImageEnhance, ImageFilter, ImageStat

    image = image.convert("RGB")
    if how == "blurred":
        return image.filter(ImageFilter.GaussianBlur(10))
    if how == "dark":
        return ImageEnhance.Brightness(image).enhance(0.15)
    if how == "bright":
        return Image.blend(image, Image.new("RGB", image.size, "white"), 0.95)
    if how == "flat":
        mean = tuple(int(v) for v in ImageStat.Stat(image).mean)
        return Image.blend(image, Image.new("RGB", image.size, mean), 0.99)
    if how == "gray":
        return image.convert("L")
    raise ValueError(how)


def build(n: int) -> Path:
    """images/: n dev photos and their copies (made once per n)."""
    from PIL import Image

    folder = ROOT / f"photos-{n}" / "images"
    if (folder.parent / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with open(FLICKR / "splits.csv", newline="") as f:
        names = sorted(r["image"] for r in csv.DictReader(f) if r["split"] == "dev")[:n]
    for name in names:
        data = (FLICKR / "images" / name).read_bytes()
        (folder / name).write_bytes(data)
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            for how in COPIES:
                degrade(im, how).save(folder / f"{Path(name).stem}__{how}.jpg", quality=92)
    (folder.parent / ".complete").write_text("")
    return folder


def run_image_size() -> int:
    """The side a default `vlpipe run` decodes at: its models' largest input (vlpipe-mini's)."""
    from vlpipe.models.registry import load_models

    captioner, embedder = load_models("mini", "mini", device="cpu")
    return max(m.image_size for m in (captioner, embedder) if m is not None)


def vlpipe_flags(folder: Path) -> tuple[dict[str, dict[str, bool]], float, int]:
    """vlpipe's flags per image from the pixels its decoder gives a default run (the image the
    worker holds), and the seconds `quality()` took over all of them: the signals' extra cost."""

    from vlpipe.images.decode import decode_image
    from vlpipe.images.quality import FLAGS, flagged, quality

    flags = {name: {} for name in FLAGS}
    seconds = 0.0
    files = sorted(folder.glob("*.jpg"))
    side = run_image_size()
    for path in files:
        image = decode_image(path.read_bytes(), side).image
        start = time.perf_counter()
        q = quality(image).columns()
        seconds += time.perf_counter() - start
        for name in FLAGS:
            flags[name][path.name] = bool(flagged(name, {c: [v] for c, v in q.items()})[0])
    return flags, seconds, len(files)


def agreement(ours: dict, theirs: dict) -> dict:
    out = {}
    for cv_name, flag in ISSUES.items():
        names = sorted(theirs[cv_name])
        a = [ours[flag][n] for n in names]
        b = [theirs[cv_name][n] for n in names]
        both = sum(x and y for x, y in zip(a, b, strict=True))
        out[cv_name] = {
            "vlpipe_flag": flag,
            "agreement": sum(x == y for x, y in zip(a, b, strict=True)) / len(names),
            "both": both,
            "only_vlpipe": sum(a) - both,
            "only_cleanvision": sum(b) - both,
            "by_copy": {
                kind: sum(ours[flag][n] == theirs[cv_name][n] for n in names if _kind(n) == kind)
                / max(1, sum(_kind(n) == kind for n in names))
                for kind in ("photo", *COPIES)
            },
        }
    return out


def _kind(name: str) -> str:
    return name.rsplit("__", 1)[1].removesuffix(".jpg") if "__" in name else "photo"


def run_time(folder: Path, n: int) -> float:
    """Wall time of a default `vlpipe run` over the n photos (no copies) in a child process."""
    photos = ROOT / f"run-{n}"
    photos.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.glob("*.jpg")):
        if "__" not in path.name:
            (photos / path.name).write_bytes(path.read_bytes())
    out = ROOT / f"run-{n}-out"
    argv = [sys.executable, "-m", "vlpipe", "run", str(photos), "-o", str(out), "--overwrite",
            "--no-progress", "--no-index"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(argv, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality_agreement")
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--no-timing", action="store_true", help="agreement only")
    parser.add_argument("--smoke", action="store_true", help="5 photos, nothing saved")
    args = parser.parse_args(argv)
    if not (FLICKR / "splits.csv").exists():
        print(f"skipped: no Flickr8k copy at {FLICKR}")
        return 0
    n = 5 if args.smoke else args.photos
    folder = build(n)
    ours, ours_s, images = vlpipe_flags(folder)
    child = run_child([str(cleanvision_python()), "-c", CLEANVISION_CHILD, str(folder),
                       ",".join(ISSUES)])  # fmt: skip
    theirs = child.output["flags"]
    agree = agreement(ours, theirs)
    report = Report(NAME, "Quality flags: vlpipe's signals at defaults vs cleanvision")
    for cv_name, a in agree.items():
        report.add(Figure(f"agreement on {cv_name} ({images} images)", a["agreement"], 1.0,
                          "all images", goal=0.9))  # fmt: skip
    details = {"photos": n, "images": images, "agreement": agree, "cleanvision": PINS[0]}
    if not args.no_timing:
        cv_s = child.output["seconds"]
        report.add(Figure("vlpipe's signals vs cleanvision find_issues, same images", ours_s,
                          cv_s, "cleanvision", "s", goal=0.2, higher_is_better=False))  # fmt: skip
        wall = run_time(folder, n)
        signals_photos = ours_s * n / images  # the photos' share of the signals' time
        report.add(Figure("signals' share of a default vlpipe run", signals_photos, wall,
                          "run wall time", "s", goal=0.05, higher_is_better=False))  # fmt: skip
        details.update(cleanvision_s=child.output["seconds"], vlpipe_signals_s=ours_s,
                       run_wall_s=wall)  # fmt: skip
    report.details = details
    print(json.dumps(agree, indent=1))
    if args.smoke:
        print("smoke: not saved")
        return 0
    report.finish()
    return 0


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"{d['photos']} Flickr8k dev photos and five copies of each (blurred, dark, bright, flat,"
        f" gray): {d['images']} images. Flags at vlpipe's documented defaults (FLAGS in"
        f" vlpipe/images/quality.py) against {d['cleanvision']}'s defaults. Agreement: the share"
        " of images on which both say the same.",
        "",
        "| cleanvision issue | vlpipe flag | agreement | both flag | only vlpipe | only"
        " cleanvision | agreement on photos / blurred / dark / bright / flat / gray |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in d["agreement"].items():
        by = " / ".join(f"{v:.2f}" for v in a["by_copy"].values())
        lines.append(f"| {name} | {a['vlpipe_flag']} | {a['agreement']:.3f} | {a['both']} |"
                     f" {a['only_vlpipe']} | {a['only_cleanvision']} | {by} |")  # fmt: skip
    if "cleanvision_s" not in d:
        lines += ["", "Times not measured in this result (run without --no-timing)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
