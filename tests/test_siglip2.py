"""SigLIP 2 with NaFlex variable resolution (`Siglip2Model`): a tiny random checkpoint, offline.

Parity with transformers' own call (Siglip2Processor, get_image_features / get_text_features) on
photos of different aspect ratios, the packed fixed-shape tensor the pipeline stacks, and
`vlpipe run` + `vlpipe search` (text and image) end to end.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.helpers.paths import EXAMPLES
from vlpipe.cli import main
from vlpipe.models.describe import describe_embedder
from vlpipe.models.registry import load_embedder

TEXTS = ["a dog running on the grass", "two children playing in the water", "red"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    from bench.hf_tiny import build_tiny_siglip2

    return build_tiny_siglip2(tmp_path_factory.mktemp("siglip2") / "model")


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Square photos, a wide strip and a tall one: NaFlex gives each its own patch grid."""
    images = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.jpg"))[:3]]
    return images + [images[0].crop((0, 0, images[0].width, 70)), images[1].crop((0, 0, 50, 210))]


def features(output) -> torch.Tensor:
    """get_*_features gives a tensor (transformers 4) or an output with pooler_output (5)."""
    return output if torch.is_tensor(output) else output.pooler_output


def test_embeddings_equal_transformers_own_call(tiny, photos):
    from transformers import AutoProcessor, Siglip2Model

    embedder = load_embedder(tiny, device="cpu")
    images = embedder.embed_images(torch.stack([embedder.preprocess(im) for im in photos]))
    texts = embedder.embed_texts(TEXTS)

    processor = AutoProcessor.from_pretrained(tiny)
    model = Siglip2Model.from_pretrained(tiny).eval()
    image_inputs = processor(images=photos, return_tensors="pt")
    length = model.config.text_config.max_position_embeddings
    text_inputs = processor(
        text=TEXTS, padding="max_length", max_length=length, return_tensors="pt"
    )
    with torch.no_grad():
        ref_images = features(model.get_image_features(**image_inputs))
        ref_texts = features(model.get_text_features(**text_inputs))
    ref_images = torch.nn.functional.normalize(ref_images, dim=-1).numpy()
    ref_texts = torch.nn.functional.normalize(ref_texts, dim=-1).numpy()

    grids = image_inputs["spatial_shapes"].tolist()
    assert len({tuple(g) for g in grids}) == 3  # square, wide and tall grids in one batch
    assert (images * ref_images).sum(1).min() >= 0.9999
    assert (texts * ref_texts).sum(1).min() >= 0.9999
    assert (images @ images.T)[~np.eye(len(photos), dtype=bool)].max() < 0.999
    assert embedder.describe()["family"] == "siglip2" and embedder.dim == 32


def test_one_image_travels_as_one_fixed_shape_uint8_tensor(tiny, photos):
    embedder = load_embedder(tiny, device="cpu")
    packed = [embedder.preprocess(im) for im in photos]
    assert {tuple(p.shape) for p in packed} == {(257, 768)} and packed[0].dtype == torch.uint8
    inputs = embedder.recipe.model_inputs(torch.stack(packed), torch.device("cpu"), torch.float32)
    rows, cols = inputs["spatial_shapes"][3].tolist()
    assert rows < cols and rows * cols <= 256  # the wide strip keeps its aspect ratio
    assert int(inputs["pixel_attention_mask"][3].sum()) == rows * cols
    assert inputs["pixel_values"][3, rows * cols :].abs().sum() == 0  # padding stays zero
    assert embedder.image_size == 256


def test_manifest_entry_without_weights(tiny):
    described = describe_embedder(tiny)
    assert described["dim"] == 32 and described["config"]["family"] == "siglip2"
    assert described["fingerprint"] == load_embedder(tiny, device="cpu").fingerprint()


def test_run_and_search_end_to_end(tiny, tmp_path):
    import pyarrow.parquet as pq

    photos = sorted(EXAMPLES.glob("*.jpg"))[:6]
    src = tmp_path / "src"
    src.mkdir()
    for p in photos:
        (src / p.name).write_bytes(p.read_bytes())
    Image.open(photos[0]).crop((0, 0, 224, 60)).save(src / "strip.png")
    out = tmp_path / "out"
    runner = CliRunner()
    argv = ["run", str(src), "-o", str(out), "--captioner", "none", "--embedder", tiny]
    result = runner.invoke(main, [*argv, "--no-progress", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "parts").to_pylist()
    assert len(rows) == 7 and all(len(r["embedding"]) == 32 for r in rows)

    query = ["search", "--image", str(src / "strip.png"), "--index", str(out), "--json"]
    found = runner.invoke(main, query)
    assert found.exit_code == 0, found.output
    hits = [json.loads(line) for line in found.output.strip().splitlines()]
    assert hits[0]["uri"].endswith("strip.png") and hits[0]["score"] == pytest.approx(1, abs=2e-3)

    found = runner.invoke(main, ["search", "a dog", "--index", str(out), "--json", "-k", "7"])
    assert found.exit_code == 0, found.output
    hits = [json.loads(line) for line in found.output.strip().splitlines()]
    vectors = {r["uri"]: np.array(r["embedding"], dtype=np.float32) for r in rows}
    query_vector = load_embedder(tiny, device="cpu").embed_texts(["a dog"])[0]
    expected = [float(vectors[h["uri"]] @ query_vector) for h in hits]
    assert [h["score"] for h in hits] == pytest.approx(expected, abs=2e-3)
    assert expected == sorted(expected, reverse=True)
