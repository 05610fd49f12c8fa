"""vlpipe-mini on real-photo conditions: Flickr8k dev as shipped and a low-resolution,
aspect-preserving rendering of it, so robustness is visible (issue 17, part 3).

Renderings (made once, kept under bench/results/tmp/mini_lowres/): `lowres160` scales each dev
photo to 160 px on its short side (aspect kept) and back up to its original size (bicubic,
JPEG quality 90): the detail of a small photo at the size the model sees; `long200` scales it
to 200 px on its long side and keeps it small (what a new user's thumbnails look like). Each
set goes through `vlpipe run` and `vlpipe eval` against the dev reference captions, with the
model given (default: the shipped weights).

    python -m bench.mini_lowres [--model mini|DIR]
    python -m bench.mini_lowres --smoke   # 6 of examples/images, nothing published
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bench.common import REPO, SCRATCH, Figure, Report, result_name

NAME = "mini_lowres"
FLICKR = REPO.parent / "shared" / "datasets" / "flickr8k"
EXAMPLES = REPO / "examples"  # the shipped sample photos and their captions (smoke runs)
ROOT = SCRATCH / NAME
SETS = ("dev", "lowres160", "long200")


@dataclass(frozen=True)
class Photos:
    """The photos a run reads: a folder with images/ and captions.csv (Flickr8k, or the
    repository's examples/ in a smoke run), the file names, and the scratch folder to use."""

    data: Path
    names: list[str]
    root: Path


def dev_names() -> list[str]:
    with open(FLICKR / "splits.csv", newline="") as f:
        return sorted(r["image"] for r in csv.DictReader(f) if r["split"] == "dev")


def sample_names(n: int) -> list[str]:
    """The first n of the repository's sample photos (no Flickr8k needed)."""
    return sorted(p.name for p in (EXAMPLES / "images").glob("*.jpg"))[:n]


def photos(smoke: bool, name: str = NAME, n: int = 6) -> Photos:
    """Flickr8k dev, or (smoke) n sample photos in a fresh scratch folder of their own."""
    if not smoke:
        return Photos(FLICKR, dev_names(), SCRATCH / name)
    root = SCRATCH / f"{name}-smoke"
    shutil.rmtree(root, ignore_errors=True)  # nothing cached: every step runs
    return Photos(EXAMPLES, sample_names(n), root)


def render(kind: str, p: Photos) -> Path:
    """The set's folder: the photos themselves, or their rendering (made once)."""
    if kind == "dev":
        return p.data / "images"
    folder = p.root / kind
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in p.names:
        with Image.open(p.data / "images" / name) as im:
            im = im.convert("RGB")
            w, h = im.size
            if kind == "lowres160":
                s = 160 / min(w, h)
                small = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
                out = small.resize((w, h), Image.BICUBIC)
            else:
                s = 200 / max(w, h)
                out = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
            out.save(folder / name, quality=90)
    done.write_text("")
    return folder


def manifest(kind: str, p: Photos) -> Path:
    """A manifest of the set's chosen files only (the Flickr8k folder holds every split)."""
    folder = render(kind, p)
    path = p.root / f"{kind}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("uri\n" + "".join(f"{folder / n}\n" for n in p.names))
    return path


def evaluate(out: Path, p: Photos) -> dict:
    """`vlpipe eval` of a run against the photos' reference captions."""
    proc = subprocess.run([sys.executable, "-m", "vlpipe", "eval", str(out), "--captions",
                           str(p.data / "captions.csv"), "--device", "cpu", "--json"],
                          check=True, cwd=REPO, capture_output=True, text=True)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(kind: str, model: str, p: Photos) -> dict:
    # always a fresh run (--overwrite): an earlier one may hold another model's outputs
    out = p.root / f"out-{kind}-{Path(model).name}"
    subprocess.run([sys.executable, "-m", "vlpipe", "run", str(manifest(kind, p)), "--output",
                    str(out), "--captioner", model, "--embedder", model, "--no-index",
                    "--no-progress", "--overwrite"], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return evaluate(out, p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mini_lowres")
    parser.add_argument("--model", default="mini")
    parser.add_argument("--smoke", action="store_true", help="6 sample photos, nothing published")
    args = parser.parse_args(argv)
    if not args.smoke and not (FLICKR / "splits.csv").exists():
        print(f"skipped: no Flickr8k copy at {FLICKR}")
        return 0
    title = f"vlpipe-mini ({args.model}) on dev and low-resolution renderings"
    report = Report(result_name(NAME, args.smoke), title)
    p = photos(args.smoke)
    scores = {kind: measure(kind, args.model, p) for kind in SETS}
    keys = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "bleu4", "cider")
    print("| set | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for kind, s in scores.items():
        print(f"| {kind} | " + " | ".join(f"{s[k]:.3f}" for k in keys) + " |")
    for kind in SETS[1:]:
        r1 = scores[kind]["t2i_r1"]
        note = "issue 17: at most 0.02 below dev"
        report.add(Figure(f"t2i R@1, {kind} vs dev", r1, scores["dev"]["t2i_r1"], "dev", note=note))
    report.details = {"model": args.model, "scores": scores}
    result = report.finish()
    if args.smoke:
        from bench.report import smoke_block

        smoke_block(NAME, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def markdown(result: dict) -> str:
    s = result["details"]["scores"]
    keys = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "bleu4", "cider")
    lines = [
        f"Model `{result['details']['model']}` on the 1,000 Flickr8k dev photos as shipped (224x224"
        " squashed), `lowres160` (160 px on the short side, aspect kept, scaled back up) and"
        " `long200` (200 px on the long side, aspect kept, left small); `vlpipe run` then"
        " `vlpipe eval` against the dev reference captions.",
        "",
        "| set | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    lines += [f"| {k} | " + " | ".join(f"{v[x]:.3f}" for x in keys) + " |" for k, v in s.items()]
    return "\n".join(lines)
