"""img2dataset downloads the Parquet manifest that `vlpipe curate --format parquet` writes.

A crawled corpus's rows point at URLs, so the check serves the repository's sample photos (and a
blurred and a dark copy of one) from a local http.server, runs `vlpipe run` over a CSV of their
URLs with a caption and a `license` column, curates it with `--where "sharpness >= 100 AND
brightness > 0.2"`, and hands SUBSET/manifest.parquet to img2dataset as its docs show:
`--input_format parquet --url_col url --caption_col caption --save_additional_columns
'["license"]'` (and `--resize_mode no --disable_all_reencoding True`: files arrive as served).
Checked: every row of the manifest arrives, byte-identical to its source, with its caption and
license, and nothing else does (the blurred and dark copies were left out).

img2dataset lives in its own venv, bench/.venv-img2dataset (git-ignored, made on first use
unless --smoke): installed beside vlpipe it would downgrade pandas (3.x to 2.x) and webdataset
(1.x to 0.2). --smoke skips with one line where that venv is absent (a fresh clone, CI) and
saves nothing; a full run saves bench/results/img2dataset_check.json.

    python -m bench.img2dataset_check [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.common import REPO, SCRATCH, Figure, Report

NAME = "img2dataset_check"
VENV = REPO / "bench" / ".venv-img2dataset"
PINS = ["img2dataset==1.47.0"]
EXAMPLES = REPO / "examples" / "images"
RULE = "sharpness >= 100 AND brightness > 0.2"


def img2dataset() -> Path:
    """The venv's img2dataset, making the venv first if it is missing."""
    exe = VENV / "bin" / "img2dataset"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", *PINS], check=True)
    return exe


def photos(folder: Path, n: int) -> dict[str, str]:
    """n sample photos plus a blurred and a dark copy of the first; name -> kind."""
    from PIL import Image, ImageFilter

    folder.mkdir(parents=True)
    kinds = {}
    sources = sorted(EXAMPLES.glob("*.jpg"))[:n]
    for i, path in enumerate(sources):
        shutil.copy(path, folder / f"good{i}.jpg")
        kinds[f"good{i}.jpg"] = "good"
    with Image.open(sources[0]) as im:
        im.convert("RGB").filter(ImageFilter.GaussianBlur(4)).save(folder / "blurred.jpg")
        Image.eval(im.convert("RGB"), lambda v: v // 6).save(folder / "dark.jpg")
    kinds.update({"blurred.jpg": "blurred", "dark.jpg": "dark"})
    return kinds


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per request would drown the output
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def vlpipe(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vlpipe", *args], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def download(exe: Path, manifest: Path, out: Path) -> None:
    argv = [str(exe), "--url_list", str(manifest), "--input_format", "parquet",
            "--url_col", "url", "--caption_col", "caption",
            "--save_additional_columns", '["license"]', "--output_format", "files",
            "--output_folder", str(out), "--resize_mode", "no", "--disable_all_reencoding", "True",
            "--processes_count", "1", "--thread_count", "4", "--enable_wandb", "False"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # its venv, not vlpipe's
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"  # else albumentations asks PyPI for a newer version
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)


def downloaded(out: Path) -> dict[str, dict]:
    """url -> {caption, license, sha256} of every sample img2dataset wrote."""
    got = {}
    for meta_path in sorted(out.glob("*/*.json")):
        meta = json.loads(meta_path.read_text())
        if meta.get("status") != "success":
            continue
        image = meta_path.with_suffix(".jpg").read_bytes()
        caption = meta_path.with_suffix(".txt").read_text()
        got[meta["url"]] = {"caption": caption, "license": meta.get("license"),
                            "sha256": hashlib.sha256(image).hexdigest()}  # fmt: skip
    return got


def check(work: Path, exe: Path, n: int) -> dict:
    import pyarrow.parquet as pq

    kinds = photos(work / "images", n)
    server, base = serve(work / "images")
    try:
        with open(work / "input.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["uri", "text", "license"])
            for name, kind in kinds.items():
                w.writerow([f"{base}/{name}", f"a {kind} photo: {name}", f"cc-{kind}"])
        vlpipe("run", str(work / "input.csv"), "-o", str(work / "out"), "--captioner", "none",
               "--no-index", "--no-progress")  # fmt: skip
        vlpipe("curate", str(work / "out"), "--to", str(work / "subset"), "--where", RULE)
        manifest = pq.read_table(work / "subset" / "manifest.parquet").to_pylist()
        download(exe, work / "subset" / "manifest.parquet", work / "img2dataset")
    finally:
        server.shutdown()
    got = downloaded(work / "img2dataset")
    want = {}
    for row in manifest:
        name = row["url"].rsplit("/", 1)[1]
        sha = hashlib.sha256((work / "images" / name).read_bytes()).hexdigest()
        want[row["url"]] = {"caption": row["caption"], "license": row["license"], "sha256": sha}
    matched = sum(got.get(url) == w for url, w in want.items())
    return {
        "images": len(kinds),
        "manifest_rows": len(want),
        "manifest_columns": list(manifest[0]) if manifest else [],
        "kept_kinds": sorted({kinds[u.rsplit("/", 1)[1]] for u in want}),
        "downloaded": len(got),
        "matched": matched,
        "extra": sorted(set(got) - set(want)),
        "img2dataset": PINS[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.img2dataset_check")
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--smoke", action="store_true", help="3 photos, nothing saved")
    args = parser.parse_args(argv)
    if args.smoke and not (VENV / "bin" / "img2dataset").exists():
        print(f"skipped: no img2dataset venv at {VENV} (python -m bench.{NAME} makes it)")
        return 0
    exe = img2dataset()
    n = 3 if args.smoke else args.photos
    report = Report(f"tmp/{NAME}-smoke" if args.smoke else NAME,
                    "img2dataset downloads a `vlpipe curate` Parquet manifest")  # fmt: skip
    SCRATCH.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=SCRATCH, prefix=f"{NAME}-") as tmp:
        d = check(Path(tmp), exe, n)
    print(json.dumps(d, indent=1))
    metric = "manifest rows img2dataset wrote byte-identical with caption and license"
    report.add(Figure(metric, d["matched"], d["manifest_rows"], "rows in the manifest", goal=1.0))
    report.details = d
    report.finish()
    ok = d["matched"] == d["manifest_rows"] > 0 and not d["extra"]
    ok = ok and d["kept_kinds"] == ["good"]
    print("ok" if ok else "FAILED: img2dataset did not reproduce the manifest")
    return 0 if ok else 1


def markdown(result: dict) -> str:
    d = result["details"]
    return (
        f"{d['images']} images served over HTTP (sample photos, a blurred and a dark copy), run"
        f" through `vlpipe run` and `vlpipe curate --where {RULE!r}`; the manifest"
        f" ({', '.join(d['manifest_columns'])}) handed to {d['img2dataset']} with `--input_format"
        " parquet --url_col url --caption_col caption --save_additional_columns"
        " '[\"license\"]'`: "
        f"{d['matched']} of {d['manifest_rows']} rows arrived byte-identical with their caption"
        f" and license; {len(d['extra'])} rows not in the manifest."
    )


if __name__ == "__main__":
    sys.exit(main())
