"""End-to-end runs of the real Beam pipeline over real files with tiny real transformers models."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tests.helpers.images import image_bytes, make_corpus
from tests.helpers.reliability import config as reliability_config
from vlpipe.api import run_and_index as run
from vlpipe.cli import main
from vlpipe.errors import VlpipeError
from vlpipe.pipeline.run import make_handler
from vlpipe.rundir import RunDir


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root)
    return root


#: this module's runs: longer captions and bigger parts than the reliability tests
config = partial(reliability_config, max_caption_tokens=8, shard_size=16, decode_threads=4)


def read_rows(output) -> list[dict]:
    run_dir = RunDir(str(output))
    return [r for p in run_dir.parts() for r in pq.read_table(run_dir.fs.open(p)).to_pylist()]


def read_failures(output) -> list[dict]:
    run_dir = RunDir(str(output))
    return [
        r for p in run_dir.failed_parts() for r in pq.read_table(run_dir.fs.open(p)).to_pylist()
    ]


@pytest.fixture(scope="module")
def dir_run(tiny, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "run"
    summary = run(config(tiny, corpus, out))
    return out, summary


def test_directory_run_accounts_for_every_input(dir_run):
    out, summary = dir_run
    assert summary.ok
    assert (summary.seen, summary.written, summary.failed) == (48, 45, 3)
    rows, failures = read_rows(out), read_failures(out)
    assert len(rows) == 45 and len(failures) == 3
    assert len({r["image_id"] for r in rows} | {f["image_id"] for f in failures}) == 48
    assert {Path(f["uri"]).name for f in failures} == {"truncated.jpg", "empty.jpg", "notes.jpg"}
    assert all(f["stage"] == "decode" and f["error"] for f in failures)
    assert (out / "_SUCCESS").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["seen"] == 48 and manifest["counts"]["written"] == 45
    assert manifest["models"]["embedder"]["dim"] == len(rows[0]["embedding"])


def test_rows_follow_the_schema(dir_run):
    out, _ = dir_run
    part = RunDir(str(out)).parts()[0]
    schema = pq.read_schema(part)
    emb_type = schema.field("embedding").type
    assert pa.types.is_fixed_size_list(emb_type) and emb_type.value_type == pa.float16()
    rows = read_rows(out)
    emb = np.array([r["embedding"] for r in rows], dtype=np.float32)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=2e-3)
    for r in rows:
        assert isinstance(r["caption"], str) and r["caption"].strip()
        assert r["width"] > 0 and r["height"] > 0 and r["text"] is None
    from PIL import Image

    for r in rows:  # the uri is the local path the image was read from
        assert Image.open(r["uri"]).size == (r["width"], r["height"]), r["uri"]


def test_captions_are_identical_across_runs(tiny, corpus, dir_run, tmp_path):
    out, _ = dir_run
    run(config(tiny, corpus, tmp_path / "again", batch_size=5, shard_size=7))
    first = {r["image_id"]: r["caption"] for r in read_rows(out)}
    second = {r["image_id"]: r["caption"] for r in read_rows(tmp_path / "again")}
    assert first == second


def test_rerun_processes_only_new_inputs(tiny, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"a{i}.png").write_bytes(image_bytes((64, 48), "PNG", i))
    out = tmp_path / "out"
    assert run(config(tiny, src, out)).processed == 6
    again = run(config(tiny, src, out))
    assert again.processed == 0 and again.ok and again.written == 6
    for i in range(3):
        (src / f"b{i}.jpg").write_bytes(image_bytes((80, 60), "JPEG", 10 + i))
    more = run(config(tiny, src, out))
    assert more.processed == 3 and more.written == 9 and len(read_rows(out)) == 9


def test_retry_failed_reprocesses_failures_once(tiny, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.png").write_bytes(image_bytes((64, 48), "PNG", 1))
    (src / "bad.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    run(config(tiny, src, out))
    (src / "bad.jpg").write_bytes(image_bytes((64, 48), "JPEG", 2))  # fixed upstream
    assert run(config(tiny, src, out)).processed == 0  # failures count as done...
    summary = run(config(tiny, src, out, retry_failed=True))  # ...until retried
    assert summary.processed == 1 and summary.written == 2 and summary.failed == 0
    assert summary.ok and not read_failures(out)


def test_manifest_source_with_text_records_text_scores(tiny, corpus, tmp_path):
    images = sorted(p for p in corpus.rglob("*.png"))[:6]
    manifest = tmp_path / "inputs.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption"])
        for i, p in enumerate(images):
            w.writerow([str(p), f"a picture number {i}" if i % 2 == 0 else ""])
    out = tmp_path / "out"
    summary = run(config(tiny, manifest, out))
    assert summary.ok and summary.written == 6
    rows = read_rows(out)
    with_text = [r for r in rows if r["text"]]
    assert len(with_text) == 3
    assert all(-1.0 <= r["text_score"] <= 1.0 for r in with_text)
    assert all(r["text_score"] is None for r in rows if not r["text"])


def test_tar_shard_source(tiny, tmp_path):
    shard = tmp_path / "shard-00000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(5):
            for name, data in (
                (f"k{i}.jpg", image_bytes((90, 70), "JPEG", 40 + i)),
                (f"k{i}.txt", f"caption {i}".encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    summary = run(config(tiny, shard, out))
    assert summary.ok and summary.written == 5
    rows = read_rows(out)
    assert sorted(r["text"] for r in rows) == [f"caption {i}" for i in range(5)]
    assert all("#k" in r["uri"] for r in rows)


def test_different_model_config_is_refused_unless_overwrite(tiny, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(image_bytes((40, 40), "PNG", 3))
    out = tmp_path / "out"
    run(config(tiny, src, out))
    with pytest.raises(VlpipeError, match="different model config"):
        run(config(tiny, src, out, max_caption_tokens=5))
    summary = run(config(tiny, src, out, max_caption_tokens=5, overwrite=True))
    assert summary.ok and summary.processed == 1


BROKEN = {"truncated.jpg", "empty.jpg", "notes.jpg"}


def test_model_failure_fails_only_that_batch(tiny, corpus, tmp_path):
    """A batch that raises (as on out-of-memory) is retried at half size, then fails its rows."""
    from vlpipe.reading.plan import plan
    from vlpipe.worker.handlers import Models
    from vlpipe.worker.shard import ShardOptions, ShardWork, process_shard

    runner = make_handler(config(tiny, corpus, tmp_path))
    real = runner.load_model()

    class BatchLimit:  # wraps the real captioner; raises like an OOM above 4 images
        def __init__(self, inner):
            self.inner, self.image_size = inner, inner.image_size

        def preprocess(self, image):
            return self.inner.preprocess(image)

        def caption(self, pixels, max_tokens=30):
            if len(pixels) > 4:
                raise RuntimeError("CUDA out of memory (simulated)")
            return self.inner.caption(pixels, max_tokens)

        def describe(self):
            return self.inner.describe()

    [spec] = plan(str(corpus), 10_000)  # one page of every image
    uris = tuple(u for u in spec.uris if Path(u).name not in BROKEN)[:8]
    work = ShardWork(replace(spec, uris=uris, first=uris[0], last=uris[-1], count=len(uris)))
    records = work.spec.uris
    models = Models(BatchLimit(real.captioner), real.embedder)
    dim = real.embedder.dim
    assert len(records) > 4 and runner.max_batch_size == 8
    summary = process_shard(work, models, runner, ShardOptions(str(tmp_path / "o"), dim=dim))
    assert summary["written"] == len(records) and summary["failed"] == 0  # halves of <=4 pass

    class AlwaysFails(BatchLimit):
        def caption(self, pixels, max_tokens=30):
            raise RuntimeError("CUDA out of memory (simulated)")

    models = Models(AlwaysFails(real.captioner), real.embedder)
    summary = process_shard(work, models, runner, ShardOptions(str(tmp_path / "q"), dim=dim))
    assert summary["written"] == 0 and summary["failed"] == len(records)
    assert summary["reasons"] == {"infer:model-error": len(records)}


def test_run_inference_with_vlpipe_handler_matches_the_pipeline(tiny, corpus, dir_run):
    """The handler plugs into Beam's own RunInference in a user's pipeline."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    from vlpipe.schema import image_id
    from vlpipe.worker.handlers import VlpipeModelHandler, prepare_image

    out, _ = dir_run
    handler = VlpipeModelHandler(tiny["blip"], tiny["clip"], max_caption_tokens=8, max_batch_size=4)
    models = handler.load_model()
    paths = sorted(str(p) for p in corpus.rglob("*.png"))[:6]
    captions = {r["image_id"]: r["caption"] for r in read_rows(out)}
    expected = [(image_id(u), captions[image_id(u)]) for u in paths]
    assert len(expected) == 6
    with beam.Pipeline(runner=FnApiRunner()) as p:
        results = (
            p
            | beam.Create(paths)
            | beam.Map(lambda u: prepare_image(image_id(u), Path(u).read_bytes(), models))
            | RunInference(handler)
            | beam.Map(lambda r: (r.image_id, r.caption))
        )
        assert_that(results, equal_to(expected))


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "/no/such/dir", "--output", "{out}"], "does not exist"),
        (["run", "{empty}", "--output", "{out}"], "no images"),
        (["run", "{src}", "--output", "{out}", "--batch-size", "0"], "batch-size"),
        (["run", "{src}", "--output", "{out}", "--batchsize", "4"], "unknown option --batchsize"),
        # a smallest batch has no meaning for ProcessShard's batches: refused, not ignored
        (["run", "{src}", "--output", "{out}", "--min-batch-size", "4"], "unknown option --min-"),
        (["run", "{src}", "--output", "{out}", "--captioner", "nobody/nothing"], "nobody/nothing"),
        (["run", "{src}", "--output", "/proc/forbidden/out"], "cannot write"),
    ],
)
def test_cli_errors_are_one_line(tiny, tmp_path, args, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(image_bytes((40, 40), "PNG", 3))
    (tmp_path / "empty").mkdir()
    fill = {"out": str(tmp_path / "out"), "src": str(src), "empty": str(tmp_path / "empty")}
    argv = [a.format(**fill) for a in args]
    if "--captioner" not in argv:
        argv += ["--captioner", tiny["blip"], "--embedder", tiny["clip"]]
    result = CliRunner().invoke(main, argv + ["--no-progress", "--no-index"])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
