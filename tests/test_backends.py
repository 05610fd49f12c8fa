"""`--backend`: vlpipe-mini's image tower compiled by OpenVINO gives torch's results, is cached on
disk, rebuilt when the cache is torn, and a missing runtime falls back to torch with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tests.helpers.vectors import row_cosines
from vlpipe.errors import VlpipeError
from vlpipe.models import backends
from vlpipe.models.backends import resolve_backend
from vlpipe.models.mini.model import load_mini
from vlpipe.pipeline.options import RunConfig
from vlpipe.pipeline.run import run

pytest.importorskip("openvino", reason="the OpenVINO backend needs `pip install openvino`")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vlpipe-cache")


@pytest.fixture()
def in_cache(cache, monkeypatch) -> Path:
    monkeypatch.setenv("VLPIPE_CACHE", str(cache))
    return cache / "openvino"


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    model = load_mini(device="cpu", precision="fp32")
    paths = sorted(EXAMPLES.glob("*.jpg"))[:8]
    return torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in paths])


def test_backend_choice():
    assert resolve_backend("auto", "cpu") == "openvino"
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("openvino", "cuda") == "torch"  # GPUs run torch
    with pytest.raises(VlpipeError, match="unknown backend 'tensorrt'"):
        resolve_backend("tensorrt", "cpu")


def test_a_missing_runtime_falls_back_to_torch_with_one_line(monkeypatch):
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    said: list[str] = []
    assert resolve_backend("openvino", "cpu", warn=said.append) == "torch"
    assert len(said) == 1 and "openvino is not installed" in said[0]
    assert resolve_backend("auto", "cpu", warn=said.append) == "torch" and len(said) == 1


def test_openvino_fp32_gives_torch_fp32_captions_and_embeddings(in_cache, batch):
    torch_model = load_mini(device="cpu", precision="fp32", backend="torch")
    ov_model = load_mini(device="cpu", precision="fp32", backend="openvino")
    assert ov_model.backend == "openvino"
    caps, emb = torch_model.caption_and_embed(batch)
    ov_caps, ov_emb = ov_model.caption_and_embed(batch)
    assert ov_caps == caps  # token for token
    assert row_cosines(emb, ov_emb).min() >= 0.9999
    assert list(in_cache.glob("*.xml")), "the converted graph is cached"


def test_openvino_bf16_stays_within_the_bf16_tolerance(in_cache, batch):
    reference = load_mini(device="cpu", precision="fp32", backend="torch")
    ov_bf16 = load_mini(device="cpu", precision="bf16", backend="openvino")
    caps, emb = reference.caption_and_embed(batch)
    ov_caps, ov_emb = ov_bf16.caption_and_embed(batch)
    assert row_cosines(emb, ov_emb).mean() >= 0.999
    assert sum(a == b for a, b in zip(caps, ov_caps, strict=True)) >= 6  # of 8


def test_a_torn_cached_graph_is_rebuilt_with_one_line(in_cache, batch, capsys):
    model = load_mini(device="cpu", precision="fp32", backend="openvino")
    expected = model.embed_images(batch)
    (xml,) = in_cache.glob("*.xml")
    xml.write_text("<net>torn")
    again = load_mini(device="cpu", precision="fp32", backend="openvino")
    np.testing.assert_allclose(again.embed_images(batch), expected, atol=1e-5)
    err = capsys.readouterr().err
    assert err.count("is unreadable") == 1 and "rebuilding" in err
    assert "<net>torn" not in xml.read_text()  # the rebuilt graph replaced it


def test_a_run_uses_and_records_the_backend(tmp_path, monkeypatch):
    src = tmp_path / "images"
    src.mkdir()
    for p in sorted(EXAMPLES.glob("*.jpg"))[:3]:
        shutil.copy(p, src / p.name)
    monkeypatch.setenv("VLPIPE_CACHE", str(tmp_path / "cache"))
    captions = {}
    for backend in ("torch", "openvino"):
        out = tmp_path / backend
        config = RunConfig(str(src), str(out), precision="fp32", backend=backend,
                           progress=False, build_index=False)  # fmt: skip
        said: list[str] = []
        assert run(config, echo=said.append).written == 3
        assert f"backend {backend}" in said[0]
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["options"]["backend"] == backend
        converted = list((tmp_path / "cache").glob("openvino/*.xml"))
        assert bool(converted) == (backend == "openvino")  # the workers ran the compiled tower
        rows = pq.read_table(out / "parts").to_pylist()
        captions[backend] = {r["uri"]: r["caption"] for r in rows}
    assert captions["openvino"] == captions["torch"]


def test_a_worker_loads_the_mini_tower_before_its_first_batch(in_cache, tmp_path):
    """ProcessShard.setup starts vlpipe-mini's tower load (its graph read or converted, then
    compiled) in the background, so it overlaps the first batch's decoding."""
    from vlpipe.worker.inference import ImageInference
    from vlpipe.worker.shard import ProcessShard, ShardOptions

    handler = ImageInference("mini", "mini", "cpu", "fp32", backend="openvino")
    shard = ProcessShard(handler, ShardOptions(str(tmp_path / "out"), dim=256))
    shard.setup()
    model = shard._models.embedder
    shard._tower_loader.join(timeout=300)
    assert model._compiled_grid is not None and model._tower is None  # no batch has run
    assert list(in_cache.glob("*.xml"))
