"""Quality signals and --score columns through a real `vlpipe run` (tiny random CLIP embedder,
a LAION-layout head and a tiny random ViT classifier), and bad --score specs refused at planning
with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageFilter
from safetensors.torch import save_file

from bench.hf_tiny import build_tiny_classifier
from tests.helpers.paths import EXAMPLES
from tests.helpers.reliability import config, tiny  # noqa: F401 - session fixture
from vlpipe.api import run_and_index as run
from vlpipe.cli import main
from vlpipe.images.quality import COLUMNS

DIM = 32  # the tiny CLIP's embedding width


def head_file(path, dim: int) -> str:
    torch.manual_seed(3)
    layers = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.Dropout(0.1),
                                 torch.nn.Linear(16, 1))  # fmt: skip
    save_file({f"layers.{k}": v for k, v in layers.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four images: a photo, its blurred copy, a dark copy, a padded copy."""
    src = tmp_path_factory.mktemp("score-src")
    with Image.open(sorted(EXAMPLES.glob("*.jpg"))[0]) as im:
        sharp = im.convert("RGB").resize((128, 96))
    sharp.save(src / "sharp.png")
    sharp.filter(ImageFilter.GaussianBlur(4)).save(src / "blurred.png")
    Image.fromarray((np.asarray(sharp) // 8).astype(np.uint8)).save(src / "dark.png")
    padded = Image.new("RGB", (192, 144), "white")
    padded.paste(sharp, (32, 24))
    padded.save(src / "padded.png")
    return src


@pytest.fixture(scope="module")
def scored(tiny, photos, tmp_path_factory):  # noqa: F811
    """A real run of the four photos with a head and a classifier score, and its index."""
    root = tmp_path_factory.mktemp("scored")
    head = head_file(root / "aesthetic.safetensors", DIM)
    clf = build_tiny_classifier(root / "clf")
    out = root / "out"
    scores = (f"aesthetic={head}", f"nsfw={clf}:nsfw")
    cfg = config(tiny, photos, out, captioner="none", float16=False, scores=scores,
                 build_index=True)  # fmt: skip
    summary = run(cfg)
    return out, head, scores, summary


def test_signals_and_scores_in_every_row(scored):
    out, head, scores, summary = scored
    assert summary.ok and summary.written == 4
    table = pq.read_table(out / "parts")
    rows = {r["uri"].rsplit("/", 1)[1]: r for r in table.to_pylist()}
    assert set(COLUMNS) | {"aesthetic", "nsfw"} <= set(table.column_names)
    assert rows["blurred.png"]["sharpness"] < rows["sharp.png"]["sharpness"] / 10
    assert rows["dark.png"]["brightness"] < rows["sharp.png"]["brightness"] / 4
    assert rows["padded.png"]["border"] == pytest.approx(1 - (128 * 96) / (192 * 144), abs=0.03)
    assert rows["sharp.png"]["border"] < 0.05
    # the phash is of the image inside its border: the padded copy hashes like its original
    assert bin(rows["padded.png"]["phash"] ^ rows["sharp.png"]["phash"]).count("1") <= 4
    # the head, by hand, on the stored (float32) embeddings
    from safetensors.numpy import load_file

    w = load_file(head)
    for r in rows.values():
        e = np.asarray(r["embedding"], np.float32)
        by_hand = ((e @ w["layers.0.weight"].T + w["layers.0.bias"]) @ w["layers.2.weight"].T
                   + w["layers.2.bias"])[0]  # fmt: skip
        assert r["aesthetic"] == pytest.approx(float(by_hand), abs=1e-4)
        assert 0.0 < r["nsfw"] < 1.0
    assert len({round(r["nsfw"], 6) for r in rows.values()}) > 1
    manifest = json.loads((out / "manifest.json").read_text())
    scorers = manifest["models"]["scorers"]
    assert scorers["aesthetic"]["kind"] == "head" and scorers["aesthetic"]["fingerprint"]
    assert scorers["nsfw"]["label"] == "nsfw" and scorers["nsfw"]["fingerprint"]
    assert manifest["config"]["scores"] == list(scores)


def test_run_summary_counts_the_flags(scored):
    out, _, _, summary = scored
    assert summary.flags["blurry"] == 1 and summary.flags["dark"] == 1  # blurred.png, dark.png
    assert summary.flags["grayscale"] == 0 and summary.flags["low-information"] == 0
    line = next(x for x in summary.lines() if x.startswith("quality of 4 written"))
    assert "1 blurry (sharpness < " in line and "1 dark (brightness < " in line
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["quality_flags"]["blurry"] == 1


def test_serve_shows_signals_and_filters_on_them(scored, tmp_path):
    pytest.importorskip("starlette", reason="needs the 'serve' extra")
    from starlette.testclient import TestClient

    from vlpipe.search.searcher import Searcher
    from vlpipe.serve.app import create_app
    from vlpipe.serve.thumbnails import ThumbnailCache

    out = scored[0]
    app = create_app(Searcher.open(str(out), device="cpu"), ThumbnailCache(tmp_path / "t", 64))
    with TestClient(app) as client:
        hits = client.get("/api/search", params={"q": "a photo", "k": 10}).json()["results"]
        assert len(hits) == 4
        for h in hits:
            assert {"sharpness", "brightness", "border", "aesthetic", "nsfw"} <= set(h["columns"])
        where = "sharpness >= 20 AND brightness > 0.2 AND nsfw > 0"
        sharp = client.get("/api/search", params={"q": "a photo", "k": 10, "where": where})
        names = sorted(h["uri"].rsplit("/", 1)[1] for h in sharp.json()["results"])
        assert names == ["padded.png", "sharp.png"]  # the blurred and the dark one filtered out
        page = client.get("/").text
        assert 'className = "signals"' in page


def test_bad_scores_fail_at_planning_in_one_line(tiny, photos, tmp_path):  # noqa: F811
    wide = head_file(tmp_path / "wide.safetensors", DIM + 8)
    clf = build_tiny_classifier(tmp_path / "clf")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x04junk")
    cases = [
        (f"a={wide}", f"takes {DIM + 8}-wide embeddings but the embedder gives {DIM}"),
        (f"a={clf}:porn", "has no label 'porn'"),
        (f"a={junk}", "not a plain state dict"),
        ("caption=x.pth", "one of vlpipe's own columns"),
    ]
    for spec, message in cases:
        out = tmp_path / f"out-{abs(hash(spec))}"
        args = ["run", str(photos), "-o", str(out), "--captioner", "none", "--embedder",
                tiny["clip"], "--no-progress", "--no-index", "--score", spec]  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], result.output
        assert "Traceback" not in result.output
        assert not (out / "parts").exists()
