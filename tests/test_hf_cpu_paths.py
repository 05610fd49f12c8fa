"""Hub CLIP / SigLIP embedders on CPU: `--backend openvino` and `--precision bf16` give eager fp32's
embeddings within the stated tolerance (docs/precision.md), `auto` picks bf16 only where the CPU
has it, and the converted image tower is cached, reused, and rebuilt when torn or stale."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from bench import hf_tiny
from tests.helpers.vectors import row_cosines
from vlpipe.models import backends
from vlpipe.models import precision as prec
from vlpipe.models.hf import HFEmbedder
from vlpipe.models.hf_openvino import CompiledVision
from vlpipe.models.registry import load_captioner, load_embedder
from vlpipe.pipeline.options import RunConfig
from vlpipe.pipeline.run import run

pytest.importorskip("openvino", reason="the OpenVINO backend needs `pip install openvino`")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
FAMILIES = ["clip", "siglip"]
AMX = ("amx_bf16", "avx512_bf16")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf-cpu")
    names = [*FAMILIES, "siglip2", "blip"]
    return {f: getattr(hf_tiny, f"build_tiny_{f}")(root / f) for f in names}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vlpipe-cache")


@pytest.fixture()
def in_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty cache folder."""
    monkeypatch.setenv("VLPIPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "openvino"


def _pixels(embedder, n: int = 12) -> torch.Tensor:
    paths = sorted(EXAMPLES.glob("*.jpg"))[:n]
    return torch.stack([embedder.preprocess(Image.open(p).convert("RGB")) for p in paths])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("backend", "precision", "mean_cos"),
    [("openvino", "fp32", 0.99999), ("openvino", "bf16", 0.999), ("torch", "bf16", 0.999)],
)
def test_each_path_gives_fp32_embeddings_within_tolerance(
    tiny_dirs, shared_cache, monkeypatch, family, backend, precision, mean_cos
):
    monkeypatch.setenv("VLPIPE_CACHE", str(shared_cache))  # one conversion per family
    reference = load_embedder(tiny_dirs[family], "cpu", "fp32", backend="torch")
    other = load_embedder(tiny_dirs[family], "cpu", precision, backend=backend)
    assert (other.backend, other.describe()["backend"]) == (backend, backend)
    assert other.describe()["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]
    pixels = _pixels(reference)
    expected, got = reference.embed_images(pixels), other.embed_images(pixels)
    cos = row_cosines(expected, got)
    assert cos.mean() >= mean_cos and cos.min() >= 0.99
    assert not np.array_equal(expected, got)  # the other path really ran
    vision = other._get("vision")
    assert isinstance(vision, torch.nn.Module) == (backend == "torch")  # else a compiled graph
    texts = ["a dog on the grass", "two children in a pool"]  # text stays fp32 on CPU
    np.testing.assert_allclose(other.embed_texts(texts), reference.embed_texts(texts), atol=1e-6)


def test_auto_picks_bf16_and_openvino_only_where_they_apply(tiny_dirs, monkeypatch):
    monkeypatch.setattr(prec, "native_bf16_flags", lambda: AMX)
    for family in FAMILIES:
        chosen = load_embedder(tiny_dirs[family], "cpu", "auto", backend="auto")
        assert (chosen.dtype, chosen.backend) == (torch.bfloat16, "openvino")
    naflex = load_embedder(tiny_dirs["siglip2"], "cpu", "auto", backend="auto")
    assert (naflex.dtype, naflex.backend) == (torch.float32, "torch")  # not measured, NaFlex
    monkeypatch.setattr(prec, "native_bf16_flags", lambda: ())  # a CPU without native bf16
    chosen = load_embedder(tiny_dirs["clip"], "cpu", "auto", backend="auto")
    assert (chosen.dtype, chosen.backend) == (torch.float32, "openvino")


def test_a_missing_runtime_falls_back_to_torch(tiny_dirs, in_cache, monkeypatch, capsys):
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    embedder = load_embedder(tiny_dirs["clip"], "cpu", "fp32", backend="openvino")
    assert embedder.backend == "torch"
    assert capsys.readouterr().err.count("openvino is not installed") == 1
    assert embedder.embed_images(_pixels(embedder, 2)).shape == (2, 32)


def test_the_cached_graph_is_reused_then_rebuilt_when_torn(
    tiny_dirs, in_cache, monkeypatch, capsys
):
    first = load_embedder(tiny_dirs["clip"], "cpu", "fp32", backend="openvino")
    pixels = _pixels(first, 4)
    expected = first.embed_images(pixels)
    (xml,) = in_cache.glob("*.xml")
    built = xml.stat().st_mtime_ns

    def no_torch_tower(self, part):
        raise AssertionError(f"the torch {part} tower was read although the graph is cached")

    with monkeypatch.context() as patched:
        patched.setattr(HFEmbedder, "_tower", no_torch_tower)
        again = load_embedder(tiny_dirs["clip"], "cpu", "fp32", backend="openvino")
        np.testing.assert_allclose(again.embed_images(pixels), expected, atol=1e-6)
    assert xml.stat().st_mtime_ns == built and len(list(in_cache.glob("*.xml"))) == 1

    xml.write_text("<net>torn")
    capsys.readouterr()
    rebuilt = load_embedder(tiny_dirs["clip"], "cpu", "fp32", backend="openvino")
    np.testing.assert_allclose(rebuilt.embed_images(pixels), expected, atol=1e-6)
    err = capsys.readouterr().err
    assert err.count("is unreadable") == 1 and "rebuilding" in err
    assert "<net>torn" not in xml.read_text()


def test_new_weights_under_the_same_path_get_a_new_graph(tiny_dirs, in_cache, tmp_path):
    model = tmp_path / "clip"
    shutil.copytree(tiny_dirs["clip"], model)
    old = load_embedder(str(model), "cpu", "fp32", backend="openvino")
    pixels = _pixels(old, 4)
    before = old.embed_images(pixels)
    torch.manual_seed(0)
    weights = load_file(model / "model.safetensors")
    weights = {k: v + 0.05 * torch.randn_like(v) if "vision" in k else v
               for k, v in weights.items()}  # fmt: skip
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    new = load_embedder(str(model), "cpu", "fp32", backend="openvino")
    reference = load_embedder(str(model), "cpu", "fp32", backend="torch").embed_images(pixels)
    after = new.embed_images(pixels)
    assert len(list(in_cache.glob("*.xml"))) == 2  # a graph per weights
    assert row_cosines(after, reference).min() >= 0.9999
    assert row_cosines(after, before).min() < 0.999  # not the stale graph


def test_a_run_embeds_through_openvino_and_records_it(tiny_dirs, tmp_path, monkeypatch):
    src = tmp_path / "images"
    src.mkdir()
    for p in sorted(EXAMPLES.glob("*.jpg"))[:3]:
        shutil.copy(p, src / p.name)
    monkeypatch.setenv("VLPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prec, "native_bf16_flags", lambda: AMX)
    out = tmp_path / "out"
    config = RunConfig(str(src), str(out), captioner="none", embedder=tiny_dirs["clip"],
                       progress=False, build_index=False)  # fmt: skip
    said: list[str] = []
    assert run(config, echo=said.append).written == 3
    assert "precision bf16" in said[0] and "backend openvino" in said[0]
    manifest = json.loads((out / "manifest.json").read_text())
    options, embedder = manifest["options"], manifest["models"]["embedder"]["config"]
    assert (options["precision"], options["backend"]) == ("bf16", "openvino")
    assert (embedder["dtype"], embedder["backend"]) == ("bfloat16", "openvino")
    assert list((tmp_path / "cache").glob("openvino/*.xml"))  # the worker ran the graph


def test_blip_captions_through_the_openvino_vision_encoder(tiny_dirs, in_cache):
    """BLIP's vision encoder as a graph, its decoder in torch: fp32 gives torch's captions token
    for token and the same patch embeddings; the graph is cached like an embedder's."""
    reference = load_captioner(tiny_dirs["blip"], "cpu", "fp32", backend="torch")
    compiled = load_captioner(tiny_dirs["blip"], "cpu", "fp32", backend="openvino")
    assert isinstance(compiled.model.vision_model, CompiledVision)
    assert not isinstance(reference.model.vision_model, CompiledVision)
    pixels = torch.stack([reference.preprocess(Image.open(p).convert("RGB"))
                          for p in sorted(EXAMPLES.glob("*.jpg"))[:6]])  # fmt: skip
    assert compiled.caption(pixels, 8) == reference.caption(pixels, 8)
    x = reference.recipe.normalize(pixels, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        expected = reference.model.vision_model(pixel_values=x)[0]
    got = compiled.model.vision_model(pixel_values=x)[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert len(list(in_cache.glob("*.xml"))) == 1


# Runs `vlpipe ARGS...` as the CLI does and, at exit, writes the names of every module the
# process imported to the file named by $MODULES_OUT.
_CLI_MODULES = """
import atexit, json, os, runpy, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["vlpipe", *sys.argv[1:]]
runpy.run_module("vlpipe", run_name="__main__")
"""


def test_a_cached_graph_run_builds_no_torch_image_tower(tiny_dirs, tmp_path):
    """`vlpipe run --captioner none` with the image tower's graph cached: the CLI never builds
    the torch CLIP tower and imports neither transformers (its image processing alone pulls in
    torchvision and torch._dynamo, about 1.4 s of CPU; the config about 0.7 s more: the family,
    width and fingerprint come from the facts the first run saved) nor Beam's ML package (0.3 s;
    only VlpipeModelHandler, for a user's RunInference, needs it)."""
    src = tmp_path / "images"
    src.mkdir()
    for p in sorted(EXAMPLES.glob("*.jpg"))[:2]:
        shutil.copy(p, src / p.name)
    listed = tmp_path / "modules.json"
    env = {**os.environ, "VLPIPE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "MODULES_OUT": str(listed)}  # fmt: skip

    def imported(out: str) -> set[str]:
        argv = [sys.executable, "-c", _CLI_MODULES, "run", str(src), "--output",
                str(tmp_path / out), "--captioner", "none", "--embedder", tiny_dirs["clip"],
                "--backend", "openvino", "--no-index", "--no-progress"]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "written 2" in proc.stdout
        return set(json.loads(listed.read_text()))

    tower = "transformers.models.clip.modeling_clip"
    assert tower in imported("first")  # converts the torch tower and caches its graph
    second = imported("second")
    unwanted = {tower, "torchvision", "transformers", "apache_beam.ml"}
    assert not unwanted & second


def test_a_worker_loads_the_image_tower_before_its_first_batch(tiny_dirs, in_cache, tmp_path):
    """ProcessShard.setup starts the image tower's load (the graph read, compiled and warmed
    up) in the background, so it overlaps the first batch's decoding instead of following it."""
    from vlpipe.worker.inference import ImageInference
    from vlpipe.worker.shard import ProcessShard, ShardOptions

    handler = ImageInference("none", tiny_dirs["clip"], "cpu", "fp32", backend="openvino")
    shard = ProcessShard(handler, ShardOptions(str(tmp_path / "out"), dim=32))
    shard.setup()
    embedder = shard._models.embedder
    shard._tower_loader.join(timeout=120)
    assert embedder.loaded_towers == ["vision"]  # no batch has been embedded
    assert list(in_cache.glob("*.xml"))
