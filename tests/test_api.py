"""The Python API (`import vlpipe`): run, open, Run.search/table/index/dedup/summary over a real
run with tiny real models; the notebook view; errors as the CLI's one-line VlpipeErrors."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import vlpipe
from tests.helpers.images import image_bytes
from tests.helpers.reliability import tiny  # noqa: F401 - session fixture
from vlpipe.errors import VlpipeError


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("api")
    src = root / "src"
    src.mkdir()
    for i in range(6):
        (src / f"p{i}.jpg").write_bytes(image_bytes((60 + 9 * i, 40 + 5 * i), "JPEG", i))
    shutil.copy(src / "p0.jpg", src / "copy.jpg")
    (src / "broken.jpg").write_bytes(b"not an image")
    run = vlpipe.run(src, root / "out", captioner=tiny["blip"], embedder=tiny["clip"],
                     batch_size=4, max_caption_tokens=5, shard_size=4)  # fmt: skip
    return src, root / "out", run


def test_run_does_what_the_cli_does_and_returns_a_run(made):
    src, out, run = made
    assert isinstance(run, vlpipe.Run) and run.path == str(out)
    assert run.last.ok and (run.last.written, run.last.failed) == (7, 1)
    summary = run.summary()
    assert summary["complete"] and summary["counts"]["written"] == 7
    assert summary["index"]["count"] == 7  # indexed, as `vlpipe run` does
    assert summary["dedup"] is None


def test_table_reads_the_rows_with_columns_and_a_filter(made):
    _, out, run = made
    every = run.table()
    assert isinstance(every, pa.Table) and every.num_rows == 7
    assert {"image_id", "uri", "caption", "embedding"} <= set(every.column_names)
    wide = run.table(columns=["uri", "width"], where="width >= 78")
    assert wide.column_names == ["uri", "width"]
    want = sorted(w for w in every.column("width").to_pylist() if w >= 78)
    assert sorted(wide.column("width").to_pylist()) == want and 0 < len(want) < 7
    with pytest.raises(VlpipeError, match="stacked statements"):
        run.table(where="width > 1; DROP TABLE x")
    with pytest.raises(VlpipeError, match="no column nope"):
        run.table(columns=["nope"])


def test_search_takes_text_an_image_or_a_path(made):
    src, out, run = made
    again = vlpipe.open(str(out))
    hits = again.search("a photo", k=3, columns=["width"])
    assert list(hits.columns[:5]) == ["rank", "score", "image_id", "uri", "caption"]
    assert len(hits) == 3 and list(hits["rank"]) == [1, 2, 3] and "width" in hits.columns
    by_path = again.search(str(src / "p3.jpg"), k=1)
    by_image = again.search(Image.open(src / "p3.jpg"), k=1)
    assert by_path.iloc[0]["uri"] == by_image.iloc[0]["uri"] == str(src / "p3.jpg")
    assert np.isclose(by_path.iloc[0]["score"], 1.0, atol=1e-2)
    filtered = again.search("a photo", k=7, where="width < 70")
    assert set(filtered["uri"]) <= {str(src / n) for n in ("p0.jpg", "p1.jpg", "copy.jpg")}


def test_search_result_shows_thumbnails_in_a_notebook(made):
    src, _, run = made
    (src / "copy.jpg").unlink()  # a hit whose source is gone shows no image, and no error
    html = run.search("a photo", k=7)._repr_html_()
    assert html.count('<img src="data:image/jpeg;base64,') == 6
    assert html.count("(no image)") == 1
    assert "<th>caption</th>" in html and str(src / "p2.jpg") in html


def test_dedup_and_index_mirror_the_cli(made):
    _, out, run = made
    summary = run.dedup(method="phash")
    assert summary["duplicates"] == 1 and run.summary()["dedup"]["duplicates"] == 1
    assert run.index()["last_action"] == {"action": "up-to-date"}
    with pytest.raises(VlpipeError, match="unknown dedup option"):
        run.dedup(treshold=0.9)


def test_errors_are_the_clis_one_line_errors(made, tmp_path):
    with pytest.raises(VlpipeError, match="no run directory"):
        vlpipe.open(str(tmp_path / "nothing"))
    with pytest.raises(VlpipeError, match="unknown option batchsize"):
        vlpipe.run(str(tmp_path), str(tmp_path / "o"), batchsize=4)
    with pytest.raises(VlpipeError, match="does not exist"):
        vlpipe.run(str(tmp_path / "missing"), str(tmp_path / "o"))
    err = VlpipeError("bad thing")
    assert err._render_traceback_() == ["VlpipeError: bad thing"]  # Jupyter: one line
    with pytest.raises(VlpipeError, match="empty query"):
        made[2].search("   ")


def test_every_run_flag_is_an_option_of_vlpipe_run_with_the_same_default():
    """`vlpipe run` is vlpipe.run with the parsed flags: run_config takes every flag by its
    Python name, and the flags' defaults make the same RunConfig as no options (progress aside,
    which the CLI shows and the API does not)."""
    from vlpipe.api import run_config
    from vlpipe.cli.run import command

    parsed = command.make_context("run", ["SRC", "-o", "OUT"]).params
    flags = {k: v for k, v in parsed.items() if k not in ("source", "output")}
    assert run_config("SRC", "OUT", **flags) == run_config("SRC", "OUT", progress=True)


def test_run_options_by_their_flag_names():
    from vlpipe.api import run_config

    config = run_config(
        "SRC", "OUT", embedding_dtype="float32", save_thumbnails=64, no_index=True,
        columns="license, score", asks=["has_text=Any text?"], candidates=2, scores=["a=b:c"],
    )  # fmt: skip
    assert (config.float16, config.thumbnail_px, config.build_index) == (False, 64, False)
    assert config.columns == ("license", "score") and config.scores == ("a=b:c",)
    assert config.prompting.asks == (("has_text", "Any text?"),)
    assert config.prompting.candidates == 2 and config.progress is False
    assert run_config("SRC", "OUT", columns=["a"], thumbnail_px=32).thumbnail_px == 32
    with pytest.raises(VlpipeError, match="--embedding-dtype must be float16 or float32"):
        run_config("SRC", "OUT", embedding_dtype="int8")
    with pytest.raises(VlpipeError, match="expected NAME=QUESTION"):
        run_config("SRC", "OUT", asks=["no question"])
