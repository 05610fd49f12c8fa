"""The transformers-backed models, on tiny random checkpoints built and saved here, loaded through
the registry exactly as a user's model directory would be."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bench import hf_tiny
from vlpipe.errors import ModelLoadError
from vlpipe.models.hf import PixelRecipe
from vlpipe.models.registry import load_captioner, load_embedder

CAPTIONERS = ["blip", "git", "vision_encoder_decoder"]
EMBEDDERS = ["clip", "siglip"]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf-tiny")
    return {
        family: getattr(hf_tiny, f"build_tiny_{family}")(root / family)
        for family in CAPTIONERS + EMBEDDERS
    }


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """Six distinct images: flat colours, halves, a gradient; landscape, portrait, square, grey."""
    rng = np.random.default_rng(7)
    shapes = [(70, 130), (200, 90), (64, 64), (301, 257), (96, 80), (120, 160)]
    out = []
    for i, (h, w) in enumerate(shapes):
        a = np.zeros((h, w, 3), np.uint8)
        a[:] = rng.integers(0, 256, 3)
        a[: h // 2] = 255 - a[: h // 2]
        if i == 3:
            a[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)
        out.append(Image.fromarray(a))
    out[4] = out[4].convert("L")  # preprocess takes any mode
    return out


@pytest.fixture(scope="session")
def captioners(tiny_dirs):
    return {f: load_captioner(tiny_dirs[f], device="cpu") for f in CAPTIONERS}


@pytest.fixture(scope="session")
def embedders(tiny_dirs):
    return {f: load_embedder(tiny_dirs[f], device="cpu") for f in EMBEDDERS}


def batch(model, images) -> torch.Tensor:
    return torch.stack([model.preprocess(im) for im in images])


# --- captioners -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", CAPTIONERS)
def test_captions_are_clean_deterministic_and_batch_independent(family, captioners, images):
    cap = captioners[family]
    pixels = batch(cap, images[:4])
    assert pixels.dtype == torch.uint8 and pixels.shape[1:] == (3, 64, 64)

    captions = cap.caption(pixels, max_tokens=6)
    specials = set(cap.tokenizer.all_special_tokens)
    assert len(captions) == 4
    for text in captions:
        assert isinstance(text, str) and text and text == text.strip()
        assert not specials & set(text.split()), text
        assert len(text.split()) <= 6  # one word per token in the tiny vocabulary
    assert cap.caption(pixels, max_tokens=6) == captions
    assert [cap.caption(pixels[i : i + 1], max_tokens=6)[0] for i in range(4)] == captions
    assert len(set(captions)) > 1, "captions should depend on the image"


def test_caption_describe_is_json_and_beam_search_loads(tiny_dirs, captioners, images):
    from vlpipe.models.hf import load_hf_captioner

    described = json.loads(json.dumps(captioners["blip"].describe()))
    assert described["family"] == "blip" and described["image_size"] == 64
    assert described["name_or_path"] == tiny_dirs["blip"] and described["dtype"] == "float32"

    beams = load_hf_captioner(tiny_dirs["blip"], device="cpu", num_beams=3)
    pixels = batch(beams, images[:2])
    first = beams.caption(pixels, max_tokens=5)
    assert all(first) and beams.caption(pixels, max_tokens=5) == first
    assert beams.describe()["num_beams"] == 3


def test_one_captioner_serves_several_threads(captioners, images):
    cap = captioners["git"]
    pixels = [batch(cap, images[i : i + 2]) for i in range(0, 6, 2)]
    serial = [cap.caption(p, max_tokens=5) for p in pixels]
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(lambda p: cap.caption(p, max_tokens=5), pixels * 2))
    assert threaded == serial * 2


# --- embedders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", EMBEDDERS)
def test_text_search_loads_only_the_text_tower(family, tiny_dirs):
    emb = load_embedder(tiny_dirs[family], device="cpu")
    assert emb.loaded_towers == []
    texts = emb.embed_texts(["a dog runs on the grass", "a cat on a sofa", "zebra"])
    assert emb.loaded_towers == ["text"]
    assert texts.shape == (3, emb.dim) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(texts[0], texts[1])
    np.testing.assert_allclose(emb.embed_texts(["a cat on a sofa"])[0], texts[1], atol=1e-5)
    assert emb.embed_texts([]).shape == (0, emb.dim)


@pytest.mark.parametrize("family", EMBEDDERS)
def test_image_embeddings_are_unit_rows_independent_of_batch(family, embedders, images):
    emb = embedders[family]
    pixels = batch(emb, images)
    vectors = emb.embed_images(pixels)
    assert vectors.shape == (len(images), emb.dim) == (6, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    singles = np.concatenate([emb.embed_images(pixels[i : i + 1]) for i in range(len(images))])
    np.testing.assert_allclose(singles, vectors, atol=1e-5)
    assert np.linalg.matrix_rank(vectors, tol=1e-3) > 1, "embeddings should depend on the image"


def test_concurrent_first_calls_load_each_tower_once(tiny_dirs):
    emb = load_embedder(tiny_dirs["clip"], device="cpu")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: emb.embed_texts(["two dogs in the snow"]), range(8)))
    assert emb.loaded_towers == ["text"]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("family", ["clip", "blip", "siglip"])
def test_preprocess_matches_the_checkpoints_own_image_processor(family, tiny_dirs, images):
    """Our uint8 PIL half + on-device normalisation reproduces transformers' PIL processor."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tiny_dirs[family], backend="pil")
    recipe = PixelRecipe.from_processor(processor, family)
    rgb = [im.convert("RGB") for im in images]
    expected = processor(images=rgb, return_tensors="pt")["pixel_values"]
    ours = torch.stack([recipe.to_uint8(im) for im in rgb])
    got = recipe.normalize(ours, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", CAPTIONERS + EMBEDDERS)
def test_the_recipe_read_from_the_saved_json_is_the_processors(family, tiny_dirs):
    """Plain processors' recipes are read from preprocessor_config.json without transformers'
    image processing (it imports torchvision): the same recipe the processor object gives."""
    from transformers import AutoImageProcessor

    from vlpipe.models.hf_pixels import saved_recipe

    processor = AutoImageProcessor.from_pretrained(tiny_dirs[family])
    expected = PixelRecipe.from_processor(processor, family)
    assert saved_recipe(family, tiny_dirs[family]) == expected


def test_processors_the_json_does_not_fully_describe_are_built_by_transformers(tmp_path):
    """A bare-number size (its meaning depends on the class), a missing field (the class default
    applies), another class or no file: no recipe from the JSON; pixel_recipe still works."""
    from transformers import AutoImageProcessor

    from vlpipe.models.hf_pixels import pixel_recipe, saved_recipe

    legacy = {"feature_extractor_type": "CLIPFeatureExtractor", "size": 64, "crop_size": 64,
              "do_center_crop": True, "do_resize": True, "do_normalize": True, "resample": 3,
              "image_mean": [0.5] * 3, "image_std": [0.5] * 3}  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    assert saved_recipe("legacy", str(tmp_path)) is None
    recipe = pixel_recipe("legacy", str(tmp_path))  # transformers reads it: 64 px, center crop
    assert (recipe.shortest_edge, recipe.crop) == (64, (64, 64))
    typed = {**legacy, "image_processor_type": "CLIPImageProcessor"}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(typed))
    assert saved_recipe("typed", str(tmp_path)) is None  # sizes as bare numbers
    sized = {**typed, "size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(sized))
    assert saved_recipe("no-rescale-fields", str(tmp_path)) is None  # do_rescale unsaid
    full = {**sized, "do_rescale": True, "rescale_factor": 1 / 255}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(full))
    processor = AutoImageProcessor.from_pretrained(str(tmp_path))
    assert saved_recipe("full", str(tmp_path)) == PixelRecipe.from_processor(processor, "full")
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({**full, "image_processor_type": "ConvNextImageProcessor"})
    )
    assert saved_recipe("other-class", str(tmp_path)) is None
    assert saved_recipe("no-file", str(tmp_path / "missing")) is None


def test_variable_size_preprocessing_is_refused():
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 64}, do_center_crop=False)
    with pytest.raises(ModelLoadError, match="fixed-size"):
        PixelRecipe.from_processor(processor, "odd-model")


def test_fingerprint_ignores_precision_but_not_weights(tiny_dirs, tmp_path):
    from transformers import CLIPModel

    path = tmp_path / "clip"
    shutil.copytree(tiny_dirs["clip"], path)
    fp32 = load_embedder(str(path), device="cpu", precision="fp32")
    bf16 = load_embedder(str(path), device="cpu", precision="bf16")
    assert fp32.fingerprint() == bf16.fingerprint()
    assert fp32.describe() != bf16.describe()
    assert fp32.fingerprint() == load_embedder(tiny_dirs["clip"], device="cpu").fingerprint()

    model = CLIPModel.from_pretrained(path)
    with torch.no_grad():
        model.visual_projection.weight.mul_(-1)
    model.save_pretrained(path)  # same place, same config, other weights
    assert load_embedder(str(path), device="cpu").fingerprint() != fp32.fingerprint()


@pytest.mark.parametrize("family", EMBEDDERS)
def test_saved_facts_give_the_same_embedder_without_its_config(
    family, tiny_dirs, images, tmp_path, monkeypatch
):
    """A second load of a local checkpoint takes family, width and fingerprint from the facts
    the first saved (vlpipe.models.hf_facts), reading no transformers config until a tower
    needs it; a changed config.json is a new checkpoint, its facts computed again."""
    monkeypatch.setenv("VLPIPE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / family
    shutil.copytree(tiny_dirs[family], path)
    first = load_embedder(str(path), device="cpu", precision="fp32")
    assert first._config is not None and not list((tmp_path / "cache").rglob("hf-facts-*"))
    print_ = first.fingerprint()  # computed with the config, and saved
    second = load_embedder(str(path), device="cpu", precision="fp32")
    assert second._config is None  # from the saved facts
    assert (second.fingerprint(), second.describe()) == (print_, first.describe())
    pixels = torch.stack([second.preprocess(im.convert("RGB")) for im in images])
    np.testing.assert_array_equal(second.embed_images(pixels), first.embed_images(pixels))
    texts = ["a red square", "two dogs"]
    np.testing.assert_array_equal(second.embed_texts(texts), first.embed_texts(texts))

    config = json.loads((path / "config.json").read_text())
    config["logit_scale_init_value"] = 1.5  # a value the fingerprint's config holds
    (path / "config.json").write_text(json.dumps(config))
    third = load_embedder(str(path), device="cpu", precision="fp32")
    assert third._config is not None and third.fingerprint() != print_


def test_sharded_checkpoint_loads_and_fingerprints(tiny_dirs, embedders, tmp_path):
    from transformers import CLIPModel

    path = tmp_path / "sharded"
    shutil.copytree(tiny_dirs["clip"], path)
    (path / "model.safetensors").unlink()
    CLIPModel.from_pretrained(tiny_dirs["clip"]).save_pretrained(path, max_shard_size="100KB")
    assert len(list(path.glob("model-*.safetensors"))) > 1
    sharded = load_embedder(str(path), device="cpu")
    texts = ["a red car on the street"]
    np.testing.assert_allclose(
        sharded.embed_texts(texts), embedders["clip"].embed_texts(texts), atol=1e-6
    )
    assert sharded.fingerprint() == load_embedder(str(path), device="cpu").fingerprint()


def test_builders_are_reproducible(tiny_dirs, tmp_path):
    again = hf_tiny.build_tiny_clip(tmp_path / "clip")
    first = load_file(Path(tiny_dirs["clip"]) / "model.safetensors")
    second = load_file(Path(again) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


# --- errors: one line, naming the model and what to do --------------------------------------------


def assert_one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("load", [load_captioner, load_embedder])
def test_unknown_hub_id_offline_is_one_clear_line(load):
    with pytest.raises(ModelLoadError) as exc:
        load("no-such-org/no-such-model", device="cpu")
    assert_one_line(exc, "'no-such-org/no-such-model'", "local directory", "unreachable")


@pytest.mark.parametrize("name", ["./no/such/dir", "/no/such/dir", "bad name!", "a/b/c"])
def test_missing_paths_and_invalid_ids(name):
    with pytest.raises(ModelLoadError) as exc:
        load_captioner(name, device="cpu")
    assert_one_line(exc, repr(name), "no such directory")


def test_directory_without_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError) as exc:
        load_embedder(str(tmp_path), device="cpu")
    assert_one_line(exc, str(tmp_path), "config.json")


@pytest.mark.parametrize("load", [load_captioner, load_embedder])
def test_config_without_weights(load, tiny_dirs, tmp_path):
    family = "blip" if load is load_captioner else "clip"
    for f in Path(tiny_dirs[family]).iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, tmp_path / f.name)
    with pytest.raises(ModelLoadError) as exc:
        load(str(tmp_path), device="cpu")
    assert_one_line(exc, str(tmp_path))


def test_wrong_kind_of_model(tiny_dirs):
    with pytest.raises(ModelLoadError) as exc:
        load_captioner(tiny_dirs["clip"], device="cpu")
    assert_one_line(exc, "'clip'", "captioner", "blip")
    with pytest.raises(ModelLoadError) as exc:
        load_embedder(tiny_dirs["blip"], device="cpu")
    assert_one_line(exc, "'blip'", "embedder", "siglip")


# --- full-size architectures (random weights) for GPU benchmarks ----------------------------------


@pytest.mark.slow
def test_full_size_clip_b32(tmp_path, images):
    emb = load_embedder(hf_tiny.build_full_size_clip_b32(tmp_path / "clip"), device="cpu")
    assert (emb.dim, emb.image_size) == (512, 224)
    vectors = emb.embed_images(batch(emb, images[:2]))
    texts = emb.embed_texts(["a photo of a dog", "a diagram"])
    assert vectors.shape == texts.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_full_size_blip_base(tmp_path, images):
    cap = load_captioner(hf_tiny.build_full_size_blip_base(tmp_path / "blip"), device="cpu")
    assert cap.image_size == 384 and cap.model.config.text_config.vocab_size == 30524
    captions = cap.caption(batch(cap, images[:1]), max_tokens=4)
    assert len(captions) == 1 and not {"[DEC]", "[SEP]", "[PAD]"} & set(captions[0].split())
