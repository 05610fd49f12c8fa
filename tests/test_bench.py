"""The benchmark harness measures what it says: corpus, decoders, contenders, memory, reports.

These check behaviour, never speed: no test here asserts a wall-clock time.
"""

from __future__ import annotations

import io
import json
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from bench import common, corpus, decode, profile, report
from bench.common import Figure


@pytest.fixture
def results_dir(tmp_path, monkeypatch) -> Path:
    """Results and BENCHMARKS.md go to a temporary folder, never into the checkout."""
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(report, "DOC", tmp_path / "BENCHMARKS.md")
    return tmp_path


# -- corpus -------------------------------------------------------------------------------------


def test_corpus_images_are_deterministic_and_realistic(flickr, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "FLICKR", flickr)
    sources = corpus.source_images(flickr)
    spec = corpus.SPECS["mixed"]
    first = [corpus.make_image(spec, i, sources) for i in range(6)]
    assert first == [corpus.make_image(spec, i, sources) for i in range(6)]
    assert len(set(first)) == 6
    shapes = set()
    for data in first:
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 640 <= max(im.size) <= 1600
            shapes.add(round(im.size[0] / im.size[1], 2))
    assert len(shapes) > 1  # mixed aspect ratios


def test_corpus_cache_grows_by_prefix(flickr, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "FLICKR", flickr)
    small = corpus.ensure(3, "1024", cache=tmp_path, workers=1)
    before = [p.read_bytes() for p in small]
    stamps = [p.stat().st_mtime_ns for p in small]
    large = corpus.ensure(5, "1024", cache=tmp_path, workers=1)
    assert large[:3] == small and [p.read_bytes() for p in small] == before
    assert [p.stat().st_mtime_ns for p in small] == stamps  # reused, not regenerated
    for p in large:
        with Image.open(p) as im:
            assert max(im.size) == 1024
    info = corpus.describe(large)
    assert info["images"] == 5 and info["long_side_px"] == [1024, 1024]
    assert 1.0 < info["mean_bits_per_pixel"] < 4.0
    csv = corpus.manifest(5, "1024", cache=tmp_path)
    assert csv.read_text().splitlines() == ["uri", *map(str, large)]


def test_corpus_without_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(corpus.CorpusError, match="Flickr8k copy .* is absent"):
        corpus.source_images(tmp_path / "nowhere")


# -- figures and the report ---------------------------------------------------------------------


def test_figure_ratio_and_goal_both_directions():
    faster = Figure("rate", 300.0, 100.0, "plain", goal=2.0)
    assert faster.ratio == pytest.approx(3.0) and faster.met is True
    memory = Figure("rss", 130.0, 100.0, "small", goal=1.2, higher_is_better=False)
    assert memory.met is False and memory.as_dict()["goal"] == "<= 1.2"
    assert Figure("x", 1.0, 2.0, "b").met is None


def test_report_replaces_only_its_own_block(results_dir):
    doc = results_dir / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## Index and search\n\nindex helper's table\n")
    result = {
        "name": "unrendered",
        "title": "Thing",
        "command": "python -m bench.thing",
        "date": "2026-01-01T00:00:00+00:00",
        "seconds": 1.0,
        "hardware": common.hardware(),
        "load_average": {"before": [1.0, 1.0, 1.0], "after": [2.0, 2.0, 2.0]},
        "figures": [Figure("rate", 3.0, 1.0, "plain", "images/s", goal=2.0).as_dict()],
        "details": {},
    }
    report.update("unrendered", result)
    result["figures"][0]["vlpipe"] = 4.0
    report.update("unrendered", result)
    text = doc.read_text()
    assert "## Index and search\n\nindex helper's table" in text and "intro" in text
    assert text.count("<!-- bench:unrendered -->") == 1
    assert "| rate (images/s) | 4.00 | 1.00 (plain) | 3.00x | >= 2.0 met |" in text


# -- decode -------------------------------------------------------------------------------------


def _photo_jpeg(size=(1024, 683)) -> bytes:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (24, 36, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def test_every_decoder_gives_the_same_model_input():
    data = _photo_jpeg()
    reference = decode.plain_pil(data).float()
    for name, fn in decode.available().items():
        pixels = fn(data)
        assert pixels.shape == (3, 224, 224) and pixels.dtype == torch.uint8, name
        # a few levels of difference from DCT scaling and filters; a wrong crop, channel order
        # or orientation would differ by tens of levels
        assert (pixels.float() - reference).abs().mean() < 8.0, name
    assert {"vlpipe", "plain PIL", "torchvision"} <= set(decode.available())


def test_decode_measure_reports_every_candidate():
    rates = decode.measure([_photo_jpeg(), _photo_jpeg((800, 1200))], rounds=1)
    for name in decode.available():
        assert rates[name]["per_core_images_s"] > 0
        assert len(rates[name]["rounds_per_core"]) == 1


# -- memory sampling and child processes --------------------------------------------------------


def test_run_child_reports_peak_memory_of_the_process_tree():
    code = (
        "import json, subprocess, sys\n"
        "child = 'import time; b = bytearray(300 * 2**20); time.sleep(1.0)'\n"
        "subprocess.run([sys.executable, '-c', child], check=True)\n"
        "print(json.dumps({'done': True}))\n"
    )
    run = common.run_child([sys.executable, "-c", code])
    assert run.output == {"done": True}
    assert run.peak_rss_bytes > 300 * 2**20  # the grandchild's buffer is counted


def test_run_child_failure_names_the_command():
    with pytest.raises(RuntimeError, match="failed"):
        common.run_child([sys.executable, "-c", "import sys; sys.exit(3)"])


# -- profile parsing ----------------------------------------------------------------------------


def test_profile_puts_samples_in_stages(tmp_path):
    raw = tmp_path / "profile.txt"
    run = "main (bench/contenders.py:1);run_vlpipe (bench/contenders.py:2)"
    raw.write_text(
        f"{run};CaptionDecoder.generate (mini/fusion.py:167);logits (mini/fusion.py:131) 30\n"
        f"{run};MiniModel.grid (mini/model.py:150);SameConv.forward (mini/efficientnet.py:60) 10\n"
        f"{run};decode_image (images/decode.py:70);_decode (images/decode.py:99) 5\n"
        f"{run};Pipeline.run (apache_beam/pipeline.py:563) 5\n"
        "main (bench/contenders.py:1);load_model (bench/contenders.py:9) 50\n"
    )
    stages, leaves = profile.breakdown(profile.parse(raw))
    assert stages == {
        "caption decoder: generate": 30,
        "image tower (EfficientNet-Lite0)": 10,
        "JPEG decode (decode_image)": 5,
        "pipeline and Beam (other)": 5,
    }
    assert leaves["logits (fusion.py:131)"] == 30


# -- end-to-end contenders ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_mini(tmp_path_factory) -> str:
    """A vlpipe-mini directory with random heads and decoder (the towers are the real ones)."""
    from vlpipe.models.mini.fusion import SPECIALS
    from vlpipe.models.mini.model import build_parts, save_model

    config = {
        "dim": 32,
        "num_beams": 1,
        "heads": {"hidden": 64, "dropout": 0.0},
        "decoder": {"d_model": 32, "layers": 2, "heads": 2, "ff": 64, "dropout": 0.0, "max_len": 8},
        "vocab": [*SPECIALS, *(f"word{i}" for i in range(40))],
    }
    torch.manual_seed(0)
    heads, decoder = build_parts(config)
    path = tmp_path_factory.mktemp("mini")
    save_model(str(path), config, {}, heads, decoder)
    return str(path)


def test_contenders_write_the_same_images(random_mini, flickr, tmp_path):
    from bench import contenders

    images = sorted((flickr / "images").glob("*.jpg"))[:5]
    csv = tmp_path / "m.csv"
    csv.write_text("uri\n" + "".join(f"{p}\n" for p in images))
    # torch in vlpipe too: the loops run torch, and OpenVINO's kernels differ in the last bits
    args = Namespace(batch_size=2, workers=0, decode_threads=2, max_tokens=4, backend="torch")
    tables = {}
    for name in contenders.CONTENDERS:
        args.contender = name
        out = tmp_path / name
        result = contenders.RUNNERS[name](
            contenders.read_manifest(str(csv)), str(csv), random_mini, out, args
        )
        assert result["seconds"] > 0 and set(result["split"]) >= {"infer_s", "write_s"}
        parts = sorted(out.rglob("*.parquet"))
        table = pq.read_table(parts[0] if name != "vlpipe" else out / "parts")
        tables[name] = table.sort_by("uri").to_pydict()
    uris = [str(p) for p in images]
    for name, t in tables.items():
        assert t["uri"] == uris, name
        assert t["width"] == [224] * 5 and t["height"] == [224] * 5, name
        norms = np.linalg.norm(np.array(t["embedding"], dtype=np.float32), axis=1)
        assert np.allclose(norms, 1.0, atol=2e-3), name
    # same decoder, same model: the pipeline and the hand-written loop agree
    a = np.array(tables["vlpipe"]["embedding"], dtype=np.float32)
    b = np.array(tables["dataloader-vlpipe-decode"]["embedding"], dtype=np.float32)
    assert np.allclose(a, b, atol=2e-3)


@pytest.mark.parametrize("beams", [1, 3])
def test_kv_cached_decoding_gives_the_same_captions_as_full_prefix(random_mini, beams):
    from bench.kv_cache import full_prefix_generate
    from vlpipe.models.mini.model import load_mini

    model = load_mini(random_mini, device="cpu")
    torch.manual_seed(beams)
    memory = model.memory(torch.randn(5, 1280, 7, 7))
    with torch.inference_mode():
        expected = full_prefix_generate(model.decoder, memory, beams, 30)
        assert any(len(ids) > 2 for ids in expected)  # real sequences, not an immediate end
        assert model.decoder.generate(memory, beams, 30) == expected
        assert model.decoder.generate(memory, beams, 2) == full_prefix_generate(
            model.decoder, memory, beams, 2
        )


def test_tower_bench_compares_the_same_grid_before_and_after(results_dir):
    from bench import tower

    assert tower.main(["--batch-size", "2", "--batches", "1"]) == 0
    saved = json.loads((results_dir / "results" / "tower.json").read_text())
    assert [f["baseline_name"] for f in saved["figures"]] == ["BN modules + F.pad (before)"] * 2
    assert all(f["vlpipe"] > 0 and f["baseline"] > 0 for f in saved["figures"])
    assert all(r["max_abs_diff"] < 1e-3 for r in saved["details"]["runs"].values())
    assert "<!-- bench:tower -->" in (results_dir / "BENCHMARKS.md").read_text()


# -- GPU benchmark without a GPU ----------------------------------------------------------------


def test_gpu_bench_without_cuda_says_not_measured(results_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the real benchmark would run")
    from bench import gpu

    assert gpu.main([]) == 0
    assert "no CUDA device: not measured" in capsys.readouterr().out
    saved = json.loads((results_dir / "results" / "gpu.json").read_text())
    assert saved["status"] == gpu.NOT_MEASURED
    doc = (results_dir / "BENCHMARKS.md").read_text()
    assert "Not measured (no GPU lent to this task)" in doc and "python -m bench.gpu" in doc


@pytest.mark.slow
def test_gpu_bench_code_path_on_cpu_with_tiny_models(results_dir, flickr):
    """Every step of bench/gpu.py (sweep, decode rates, vlpipe run) on tiny models, on CPU."""
    from bench import gpu

    folder = flickr / "images"
    argv = ["--device", "cpu", "--precision", "fp32", "--tiny", "--images", "8"]
    assert gpu.main([*argv, "--images-dir", str(folder), "--batch-sizes", "2,4"]) == 0
    saved = json.loads((results_dir / "results" / "tmp" / "gpu-tiny.json").read_text())
    assert [r["batch"] for r in saved["details"]["sweep"]] == [2, 4]
    assert saved["details"]["end_to_end"]["written"] == 8


# -- model families (bench/families.py, bench/models_cpu.py) ------------------------------------


def test_models_cpu_smoke_times_a_family_beside_the_pair(results_dir):
    """Tiny models through the real children (build, vlpipe's handler, timing, peak RSS)."""
    from bench import models_cpu

    assert models_cpu.main(["--smoke", "--only", "siglip2-base-naflex"]) == 0
    saved = json.loads((results_dir / "results" / "tmp" / "models_cpu-smoke.json").read_text())
    pair, siglip2 = saved["details"]["rows"]
    assert pair["family"] == "blip-base+clip-b32" and pair["sample_caption"]
    assert siglip2["embedding_dim"] == 32 and siglip2["sample_caption"] is None
    for row in (pair, siglip2):
        assert row["images_s"] > 0 and row["peak_rss_gb"] > 0.1 and row["images"] == 2
    [figure] = saved["figures"]
    assert figure["baseline"] == pair["images_s"] and figure["vlpipe"] == siglip2["images_s"]
    assert not (results_dir / "BENCHMARKS.md").exists()  # a smoke run publishes nothing


def test_models_cpu_placeholder_holds_no_figures(results_dir):
    from bench import models_cpu

    assert models_cpu.main(["--placeholder"]) == 0
    doc = (results_dir / "BENCHMARKS.md").read_text()
    assert "Not measured yet" in doc and "python -m bench.models_cpu" in doc
    assert "images/s |" not in doc.split("<!-- bench:models_cpu -->")[1]


def test_a_family_over_its_time_cap_is_one_line(tmp_path):
    from bench.families import FAMILIES, run_family

    args = Namespace(device="cpu", precision=None, tiny=True, batch=2, batches=1,
                     max_tokens=4, timeout=1, images_dir=None)  # fmt: skip
    row = run_family(FAMILIES["siglip2-base-naflex"], args, tmp_path / "m")
    assert row["error"] == "over the 1 s cap" and "images_s" not in row


@pytest.mark.slow
def test_models_cpu_smoke_runs_every_family(results_dir):
    from bench import families, models_cpu

    assert models_cpu.main(["--smoke"]) == 0
    saved = json.loads((results_dir / "results" / "tmp" / "models_cpu-smoke.json").read_text())
    rows = {r["family"]: r for r in saved["details"]["rows"]}
    assert set(rows) == set(families.FAMILIES)
    for name, row in rows.items():
        assert "error" not in row and row["images_s"] > 0, row
        role = families.FAMILIES[name].role
        assert (row["embedding_dim"] is not None) == (role in ("pair", "embedder")), name
        assert isinstance(row["sample_caption"], str) == (role != "embedder"), name


@pytest.mark.slow
def test_gpu_bench_smoke_times_the_families_on_cpu(results_dir):
    from bench import gpu

    assert gpu.main(["--smoke", "--families", "open_clip-vit-l-14,qwen2-vl-2b"]) == 0
    saved = json.loads((results_dir / "results" / "tmp" / "gpu-tiny.json").read_text())
    rows = saved["details"]["families"]
    assert [r["family"] for r in rows] == ["open_clip-vit-l-14", "qwen2-vl-2b"]
    assert all(r["images_s"] > 0 for r in rows)
    assert "SmolVLM" not in gpu.markdown(saved) and "Qwen2-VL-2B" in gpu.markdown(saved)
