"""open_clip embedders (`--embedder open_clip:...`): a tiny random open_clip model, offline.

Parity with open_clip's own reference call (its preprocess, encode_image / encode_text), every
form of the name (checkpoint .pt / .safetensors, a model folder, an hf-hub id from a local cache),
`vlpipe run` + text score + `vlpipe search` (text and image) + `vlpipe dedup` end to end, and the
one-line refusals.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bench.openclip_tiny import ARCH, FAKE_COMMIT, HUB_ID, build_tiny_open_clip, register_arch
from tests.helpers.paths import EXAMPLES
from vlpipe.cli import main
from vlpipe.errors import ModelLoadError
from vlpipe.models.describe import describe_embedder
from vlpipe.models.registry import load_captioner, load_embedder

TEXTS = ["a dog running on the grass", "two children playing in the water", "red"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    return build_tiny_open_clip(tmp_path_factory.mktemp("open_clip"))


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Real photos plus a wide crop and a tall one (the center crop and resize matter)."""
    images = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.jpg"))[:4]]
    return images + [images[0].crop((0, 0, images[0].width, 90)), images[1].crop((0, 0, 60, 200))]


@pytest.fixture
def hub_cache(tiny, monkeypatch):
    """huggingface_hub reads its cache folder per call: point it at the fake cache entry."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", tiny["hf_cache"])


def reference(model_name: str, pretrained: str | None, images, texts):
    """open_clip's own call: its eval transform, tokenizer, encode_* with normalize=True."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    tokenizer = open_clip.get_tokenizer(model_name)
    with torch.no_grad():
        image_emb = model.eval().encode_image(torch.stack([preprocess(im) for im in images]), True)
        text_emb = model.encode_text(tokenizer(texts), normalize=True)
    return image_emb.numpy(), text_emb.numpy()


@pytest.mark.parametrize("form", ["pt", "safetensors", "folder", "hub"])
def test_embeddings_equal_open_clips_own_call(form, tiny, photos, request):
    if form == "hub":
        request.getfixturevalue("hub_cache")
        name, ref_name, ref_weights = f"open_clip:hf-hub:{HUB_ID}", f"hf-hub:{HUB_ID}", None
    elif form == "folder":
        name = f"open_clip:local-dir:{tiny['folder']}"
        ref_name, ref_weights = f"local-dir:{tiny['folder']}", None
    else:
        name, ref_name, ref_weights = f"open_clip:{ARCH}@{tiny[form]}", ARCH, tiny[form]
    embedder = load_embedder(name, device="cpu")
    images = embedder.embed_images(torch.stack([embedder.preprocess(im) for im in photos]))
    texts = embedder.embed_texts(TEXTS)
    ref_images, ref_texts = reference(ref_name, ref_weights, photos, TEXTS)
    assert (images * ref_images).sum(1).min() >= 0.9999
    assert (texts * ref_texts).sum(1).min() >= 0.9999
    assert np.allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    off_diagonal = (images @ images.T)[~np.eye(len(photos), dtype=bool)]
    assert off_diagonal.max() < 0.999  # images are told apart: the test can see a wrong image
    assert embedder.dim == 32 and images.shape == (len(photos), 32)
    if form == "hub":  # the hub snapshot's commit is part of the weights' identity
        assert embedder.weights["revision"] == FAKE_COMMIT


def test_folder_preprocessing_is_the_folders_own(tiny, photos):
    """The folder's config asks for mean/std 0.5 and a squash resize, the checkpoint's for
    OpenAI's mean/std and shortest-side + crop: same weights, different embeddings."""
    folder = load_embedder(f"open_clip:local-dir:{tiny['folder']}", device="cpu")
    pt = load_embedder(f"open_clip:{ARCH}@{tiny['pt']}", device="cpu")
    wide = photos[4]
    assert tuple(folder.preprocess(wide).shape) == (3, 64, 64) == tuple(pt.preprocess(wide).shape)
    a = folder.embed_images(folder.preprocess(wide)[None])
    b = pt.embed_images(pt.preprocess(wide)[None])
    assert float(a[0] @ b[0]) < 0.999
    assert folder.fingerprint() != pt.fingerprint()
    assert np.allclose(folder.embed_texts(TEXTS), pt.embed_texts(TEXTS), atol=1e-5)


def test_manifest_entry_needs_no_weights_and_matches_the_loaded_model(tiny, tmp_path):
    name = f"open_clip:{ARCH}@{tiny['pt']}"
    described = describe_embedder(name)
    embedder = load_embedder(name, device="cpu")
    assert embedder.loaded_towers == []  # dim, config and fingerprint came from files alone
    assert described["dim"] == 32 and described["config"]["family"] == "open_clip"
    assert described["fingerprint"] == embedder.fingerprint()
    other = build_tiny_open_clip(tmp_path, seed=1)["pt"]
    assert describe_embedder(f"open_clip:{ARCH}@{other}")["fingerprint"] != embedder.fingerprint()
    bf16 = load_embedder(name, precision="bf16", device="cpu")
    assert bf16.fingerprint() == embedder.fingerprint()


def test_text_queries_free_the_image_tower(tiny, photos):
    embedder = load_embedder(f"open_clip:{ARCH}@{tiny['pt']}", device="cpu")
    texts = embedder.embed_texts(TEXTS)
    assert embedder.loaded_towers == ["text"] and embedder._model.visual is None
    images = embedder.embed_images(embedder.preprocess(photos[0])[None])
    assert embedder.loaded_towers == ["text", "vision"] and images.shape == (1, 32)
    assert np.allclose(embedder.embed_texts(TEXTS), texts, atol=1e-6)


def write_corpus(root: Path) -> tuple[Path, list[Path]]:
    """A CSV manifest of 8 photos (every other one with a caption) and a re-encoded copy."""
    photos = sorted(EXAMPLES.glob("*.jpg"))[:8]
    copy = root / "copy_of_0.jpg"
    Image.open(photos[0]).convert("RGB").save(copy, quality=85)
    manifest = root / "inputs.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption"])
        for i, p in enumerate([*photos, copy]):
            w.writerow([str(p), "a dog running on the grass" if i % 2 == 0 else ""])
    return manifest, photos


def test_run_search_and_dedup_end_to_end(tiny, tmp_path):
    import pyarrow.parquet as pq

    name = f"open_clip:{ARCH}@{tiny['pt']}"
    manifest, photos = write_corpus(tmp_path)
    out = tmp_path / "out"
    runner = CliRunner()
    argv = ["run", str(manifest), "-o", str(out), "--captioner", "none", "--embedder", name]
    result = runner.invoke(main, [*argv, "--no-progress", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "parts").to_pylist()
    assert len(rows) == 9 and all(len(r["embedding"]) == 32 for r in rows)
    assert all((r["text_score"] is None) == (not r["text"]) for r in rows)
    manifest_json = json.loads((out / "manifest.json").read_text())
    assert manifest_json["models"]["embedder"]["name"] == name

    embedder = load_embedder(name, device="cpu")
    by_uri = {r["uri"]: r for r in rows}
    query = embedder.embed_texts(["a dog running on the grass"])[0]
    for uri, row in by_uri.items():  # the text score is open_clip's cosine of image and text
        if row["text"]:
            emb = embedder.embed_images(embedder.preprocess(Image.open(uri).convert("RGB"))[None])
            assert row["text_score"] == pytest.approx(float(emb[0] @ query), abs=2e-3)

    query = ["search", "--image", str(photos[3]), "--index", str(out), "--json"]
    found = runner.invoke(main, query)
    assert found.exit_code == 0, found.output
    hits = [json.loads(line) for line in found.output.strip().splitlines()]
    assert hits[0]["uri"] == str(photos[3]) and hits[0]["score"] == pytest.approx(1.0, abs=2e-3)

    found = runner.invoke(main, ["search", "two children playing", "--index", str(out), "--json"])
    assert found.exit_code == 0, found.output
    hits = [json.loads(line) for line in found.output.strip().splitlines()]
    vectors = np.array([by_uri[h["uri"]]["embedding"] for h in hits], dtype=np.float32)
    expected = vectors @ embedder.embed_texts(["two children playing"])[0]
    assert [h["score"] for h in hits] == pytest.approx(sorted(expected, reverse=True), abs=2e-3)

    deduped = runner.invoke(
        main, ["dedup", str(out), "--method", "embedding", "--threshold", "0.995", "--json"]
    )
    assert deduped.exit_code == 0, deduped.output
    clusters = pq.read_table(out / "dedup" / "clusters.parquet").to_pylist()
    uri = {r["image_id"]: r["uri"] for r in rows}
    copy_row = next(r for r in clusters if uri[r["image_id"]].endswith("copy_of_0.jpg"))
    assert uri[copy_row["cluster_id"]] in (str(photos[0]), str(tmp_path / "copy_of_0.jpg"))
    paired = {uri[r["image_id"]] for r in clusters if r["cluster_id"] == copy_row["cluster_id"]}
    assert paired == {str(photos[0]), str(tmp_path / "copy_of_0.jpg")}


@pytest.mark.parametrize(
    "spec, message",
    [
        (ARCH, "needs pretrained weights"),
        (f"{ARCH}@", "needs pretrained weights"),
        ("NoSuchArch-99@laion2b_s34b_b79k", "not an open_clip architecture"),
        ("ViT-B-32@no_such_tag", "unknown pretrained tag 'no_such_tag' for ViT-B-32"),
        (f"{ARCH}@/no/such/checkpoint.pt", "no such checkpoint file"),
        (f"{ARCH}@{{list_pt}}", "is not a state dict"),
        (f"{ARCH}@{{json}}", "is not a state dict"),
        ("hf-hub:", "needs ORG/NAME"),
    ],
)
def test_bad_names_are_one_line(spec, message, tiny, tmp_path):
    register_arch(Path(tiny["pt"]).parent / "configs")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "config.json").write_text("{}")
    spec = spec.format(list_pt=tmp_path / "list.pt", json=tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match=message) as err:
        describe_embedder(f"open_clip:{spec}")
    assert "\n" not in str(err.value)


def test_a_checkpoint_of_another_architecture_fails_in_one_line(tiny, tmp_path):
    state = torch.load(tiny["pt"], weights_only=True)
    del state["text_projection"]
    torch.save(state, tmp_path / "partial.pt")
    embedder = load_embedder(f"open_clip:{ARCH}@{tmp_path / 'partial.pt'}", device="cpu")
    with pytest.raises(ModelLoadError, match="text_projection") as err:
        embedder.embed_texts(["a dog"])
    assert "\n" not in str(err.value)


def test_cli_refuses_random_init_and_captioning_in_one_line(tiny, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sorted(EXAMPLES.glob("*.jpg"))[0], src / "a.jpg")
    runner = CliRunner()
    for extra, message in [
        (["--embedder", "open_clip:ViT-B-32"], "needs pretrained weights"),
        (["--captioner", f"open_clip:{ARCH}@{tiny['pt']}"], "cannot caption"),
    ]:
        argv = ["run", str(src), "-o", str(tmp_path / "out"), "--no-progress", *extra]
        result = runner.invoke(main, argv)
        assert result.exit_code != 0 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    with pytest.raises(ModelLoadError, match="cannot caption"):
        load_captioner(f"open_clip:{ARCH}@{tiny['pt']}", device="cpu")
