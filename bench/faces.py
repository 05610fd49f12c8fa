"""Face detection (`--detect-faces`): precision and recall per face on hand-labelled photos, and
its cost as a share of a default run, beside OpenCV's Haar cascade (the baseline detector here).

1. Accuracy (not a timing): bench/faces_labels.json holds 100 Flickr8k dev photos of people
   (picked by captions mentioning people, seed 26) labelled by hand: 100 faces in 54 photos, plus
   "ignore" regions (faces too small, masked or turned away to call). A detection matches a
   labelled face at IoU >= 0.3 (hand boxes are rough and detectors' boxes are tighter or looser
   than a person would draw), greedily, most confident first; an unmatched detection inside an
   ignore region counts neither way; any other unmatched detection is a false positive.
   vlpipe's detector (MTCNN from facenet-pytorch, at its default threshold and minimum face) runs
   on the image as the worker decodes it; the Haar cascade (opencv-python-headless 4.x, its
   frontalface_default model, minNeighbors 5) on the same image upscaled 2x (its smallest window
   is 24 px) with the same smallest face.
2. Cost (a timing): `vlpipe run` of the same photos, default options, against the same run with
   `--detect-faces`, both fresh processes, alternating rounds; the share is the extra time over
   the default run. The detectors' own time per image is printed beside it.

    python -m bench.faces [--rounds 3] [--images 100] [--smoke] [--accuracy-only]

`--smoke` runs everything on 8 photos and one round, to prove the script works (its figures mean
nothing). `--accuracy-only` measures precision and recall and times nothing (for a busy machine:
results/faces-accuracy.json). Needs ../shared/datasets/flickr8k and facenet-pytorch (`make bench`
installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, SCRATCH, Figure, Report

NAME = "faces"
TITLE = "Face detection: precision/recall on hand-labelled photos, and cost in a run"
LABELS = REPO / "bench" / "faces_labels.json"
FLICKR = REPO.parent / "shared" / "datasets" / "flickr8k"
MATCH_IOU = 0.3


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _inside(box, region) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]


def score_image(found: list, faces: list, ignore: list) -> tuple[int, int, int]:
    """(true positives, false positives, missed faces) of one image; `found` most confident
    first."""
    free = list(range(len(faces)))
    tp = fp = 0
    for box in found:
        best = max(free, key=lambda i: iou(box, faces[i]), default=None)
        if best is not None and iou(box, faces[best]) >= MATCH_IOU:
            free.remove(best)
            tp += 1
        elif not any(_inside(box, r) or iou(box, r) >= MATCH_IOU for r in ignore):
            fp += 1
    return tp, fp, len(free)


def evaluate(detect, images: list[dict]) -> dict:
    """Precision and recall per face of `detect(PIL image) -> boxes` over labelled images."""
    from PIL import Image

    tp = fp = fn = 0
    seconds = 0.0
    for item in images:
        with Image.open(FLICKR / "images" / item["image"]) as im:
            rgb = im.convert("RGB")
        start = time.perf_counter()
        found = detect(rgb)
        seconds += time.perf_counter() - start
        a, b, c = score_image(found, item["faces"], item["ignore"])
        tp, fp, fn = tp + a, fp + b, fn + c
    return {
        "faces": tp + fn,
        "detections": tp + fp,
        "true_positives": tp,
        "false_positives": fp,
        "missed": fn,
        "precision": round(tp / (tp + fp), 3) if tp + fp else None,
        "recall": round(tp / (tp + fn), 3) if tp + fn else None,
        "ms_per_image": round(1000 * seconds / max(1, len(images)), 1),
    }


def haar_detector(min_face: float):
    """OpenCV's frontal-face Haar cascade (OpenCV 4.x ships it; 5.x dropped cascades)."""
    import cv2
    import numpy as np

    if not hasattr(cv2, "CascadeClassifier"):
        return None
    cascade = cv2.CascadeClassifier(
        os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
    )

    def detect(image) -> list:
        gray = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
        gray = cv2.resize(gray, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
        h, w = gray.shape
        side = max(24, int(min_face * min(h, w)))
        boxes = cascade.detectMultiScale(gray, 1.1, 5, minSize=(side, side))
        return [(x / w, y / h, (x + bw) / w, (y + bh) / h) for x, y, bw, bh in boxes]

    return detect


def timed_runs(images: list[dict], rounds: int, out: Path) -> dict:
    """Seconds of a default `vlpipe run` and of one with --detect-faces, median of `rounds`."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "photos.csv"
    manifest.write_text(
        "uri\n" + "".join(f"{FLICKR / 'images' / i['image']}\n" for i in images), encoding="utf-8"
    )
    base = [sys.executable, "-m", "vlpipe", "run", str(manifest), "--no-index", "--no-progress",
            "--overwrite"]  # fmt: skip
    contenders = {"default": [], "detect-faces": ["--detect-faces"]}
    seconds: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            argv = [*base, "--output", str(out / name), *contenders[name]]
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, cwd=REPO)
            seconds[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in seconds.items()} | {"rounds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="8 photos, 1 round: proves it runs")
    parser.add_argument("--accuracy-only", action="store_true", help="precision/recall, no timing")
    args = parser.parse_args()
    if not FLICKR.exists():
        sys.exit(f"bench.faces needs {FLICKR}")
    from vlpipe.models.faces import DEFAULT_MIN_FACE, FaceDetector

    images = json.loads(LABELS.read_text(encoding="utf-8"))["images"]
    n, rounds = (8, 1) if args.smoke else (args.images, args.rounds)
    images = images[:n]
    name = f"{NAME}-accuracy" if args.accuracy_only else NAME
    report = Report(f"{name}-smoke" if args.smoke else name, TITLE)  # smoke: not a result
    mtcnn = evaluate(FaceDetector().detect, images)
    haar_detect = haar_detector(DEFAULT_MIN_FACE)
    haar = evaluate(haar_detect, images) if haar_detect else None
    if args.accuracy_only:  # the detectors' time per image is a timing: left out
        for result in (mtcnn, haar or {}):
            result.pop("ms_per_image", None)
    report.details.update(images=len(images), match_iou=MATCH_IOU, mtcnn=mtcnn, haar=haar)
    for metric in ("precision", "recall"):
        report.add(
            Figure(
                f"{metric} per face", mtcnn[metric] or 0.0, (haar or {}).get(metric) or 0.0,
                "OpenCV Haar cascade" if haar else "none (OpenCV 5 has no cascades)",
            )
        )  # fmt: skip
    if args.accuracy_only:
        report.finish()
        return
    runs = timed_runs(images, rounds, SCRATCH / NAME)
    share = runs["detect-faces"] / runs["default"] - 1
    report.details.update(run_seconds=runs, detect_share_of_default_run=round(share, 3))
    report.add(
        Figure(
            "run time with --detect-faces / default run", runs["detect-faces"], runs["default"],
            "vlpipe run, default options", unit="s", higher_is_better=False,
            note=f"detection adds {100 * share:.0f}% to a default run on {len(images)} photos",
        )
    )  # fmt: skip
    report.finish()


if __name__ == "__main__":
    main()
