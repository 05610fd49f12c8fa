"""Prompted captioners (LLaVA, Qwen2-VL, Idefics3 / SmolVLM, PaliGemma) on tiny random models
built offline: parity with a plain `model.generate`, `vlpipe run` with --prompt / --ask /
--candidates, and the one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bench import hf_tiny_prompted
from bench.hf_tiny import build_tiny_blip, build_tiny_clip
from tests.helpers.images import image_bytes
from vlpipe.api import run_and_index as run
from vlpipe.cli import main
from vlpipe.errors import VlpipeError
from vlpipe.models.prompted import PromptedCaptioner
from vlpipe.models.prompting import Prompting
from vlpipe.models.registry import load_captioner, load_embedder
from vlpipe.pipeline.options import RunConfig
from vlpipe.rundir import RunDir

FAMILIES = hf_tiny_prompted.FAMILIES


@pytest.fixture(scope="session")
def dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("prompted")
    out = {f: hf_tiny_prompted.build(f, root / f) for f in FAMILIES}
    out["clip"] = build_tiny_clip(root / "clip")
    out["blip"] = build_tiny_blip(root / "blip")
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Five small images of different sizes and a broken file."""
    root = tmp_path_factory.mktemp("corpus")
    for i, size in enumerate([(50, 40), (30, 45), (56, 56), (40, 40), (44, 30)]):
        (root / f"img{i}.png").write_bytes(image_bytes(size, "PNG", i))
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def small_images() -> list[Image.Image]:
    """Under every tiny processor's pixel bound (so vlpipe's preprocess keeps them as they are),
    of different sizes (so Idefics3 tiles them differently and the batch is padded) and far
    apart (dark noise, bright noise, two flat halves), so tiny models tell them apart."""
    rng = np.random.default_rng(3)
    dark = rng.integers(0, 80, (40, 50, 3), dtype=np.uint8)
    bright = rng.integers(170, 256, (56, 30, 3), dtype=np.uint8)
    halves = np.zeros((32, 32, 3), np.uint8)
    halves[:16] = (250, 20, 20)
    halves[16:] = (20, 20, 250)
    return [Image.fromarray(a) for a in (dark, bright, halves)]


def plain_prompt(processor, family: str, prompt: str) -> str:
    if not getattr(processor, "chat_template", None):  # PaliGemma, BLIP-2: the processor
        return prompt  # inserts the image tokens itself
    turn = [{"type": "image"}, {"type": "text", "text": prompt}]
    return processor.apply_chat_template(
        [{"role": "user", "content": turn}], add_generation_prompt=True
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_caption_equals_plain_generate_token_for_token(family, dirs):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cap = load_captioner(dirs[family], device="cpu")
    assert isinstance(cap, PromptedCaptioner)
    images = small_images()
    pixels = cap.collate([cap.preprocess(im) for im in images])
    ours = cap.generate_ids(pixels, [cap.prompt] * len(images), max_tokens=8)

    processor = AutoProcessor.from_pretrained(dirs[family])
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(dirs[family]).eval()
    text = plain_prompt(processor, family, cap.prompt)
    inputs = processor(images=images, text=[text] * len(images), padding=True, return_tensors="pt")
    inputs.pop("labels", None)
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=8)
    theirs = out[:, inputs["input_ids"].shape[1] :].tolist()
    assert ours == theirs
    assert len({tuple(t) for t in theirs}) > 1  # the images give different answers

    captions = cap.caption(pixels, max_tokens=8)
    expected = processor.tokenizer.batch_decode(theirs, skip_special_tokens=True)
    assert captions == [t.strip() for t in expected]
    specials = set(processor.tokenizer.all_special_tokens)
    for caption in captions:
        assert not specials & set(caption.split())
        assert caption == caption.strip()


@pytest.mark.parametrize("family", FAMILIES)
def test_questions_share_one_image_processor_pass(family, dirs, monkeypatch):
    """Several prompts per image: one batch equal, tensor for tensor, to the processor's own
    over every (image, prompt) pair (BLIP-2: the same unpadded tokens), made with one pass of
    the image processor; each image's answers are what it gets alone."""
    cap = load_captioner(dirs[family], device="cpu")
    images = small_images()
    prompts = [cap.prompt, "How many?", "Is there any text in this image?"]
    pairs = [(im, p) for p in prompts for im in images]  # prompt-major
    reference = cap.inputs([im for im, _ in pairs], [p for _, p in pairs])

    image_processor = type(cap.processor.image_processor)
    calls = []
    original = image_processor.__call__

    def counting(self, *args, **kw):
        calls.append(1)
        return original(self, *args, **kw)

    monkeypatch.setattr(image_processor, "__call__", counting)
    merged = cap.inputs_per_prompt(images, prompts)
    assert len(calls) == 1
    assert merged.keys() == reference.keys()
    ours, theirs = merged["attention_mask"].bool(), reference["attention_mask"].bool()
    for key, tensor in reference.items():
        assert merged[key].shape == tensor.shape, key
        if family == "blip2" and tensor.shape == ours.shape:  # its processor pads between the
            for i in range(len(tensor)):  # query tokens and the text: the same tokens remain
                assert torch.equal(merged[key][i][ours[i]], tensor[i][theirs[i]]), key
        else:
            assert torch.equal(merged[key], tensor), key
    answers = cap.answers(images, prompts, max_tokens=4)
    alone = [cap.generate([images[1]], [p], max_tokens=4)[0] for p in prompts]
    assert answers[1] == alone


@pytest.mark.parametrize("family", FAMILIES)
def test_questions_share_one_vision_pass(family, dirs, monkeypatch):
    """The vision tower encodes each image once for all its prompts (the families in
    SHARED_VISION), and the answers are the same as when every sequence encodes its own copy."""
    import functools

    from vlpipe.models import prompted_batch

    cap = load_captioner(dirs[family], device="cpu")
    images = small_images()
    prompts = [cap.prompt, "How many?", "Is there any text in this image?"]
    encoded: list[int] = []
    inner = getattr(cap.model, "model", None)
    if inner is not None:
        cls = type(inner)
        encode = cls.get_image_features

        @functools.wraps(encode)  # generate reads the signature
        def counting(self, pixel_values, *args, **kw):
            encoded.append(len(pixel_values))
            return encode(self, pixel_values, *args, **kw)

        monkeypatch.setattr(cls, "get_image_features", counting)
    shared = cap.answers(images, prompts, max_tokens=5)
    monkeypatch.setattr(prompted_batch, "SHARED_VISION", frozenset())
    each = cap.answers(images, prompts, max_tokens=5)
    assert shared == each
    if family != "blip2":  # BLIP-2 encodes every copy (not in SHARED_VISION)
        assert len(encoded) == 2 and encoded[1] == 3 * encoded[0]  # 1 pass, then 3


def test_default_prompts_and_chat_templates(dirs):
    llava = load_captioner(dirs["llava"], device="cpu")
    assert llava.prompt == "Describe this image in one sentence."
    assert llava.text_for("Is it red?") == "user : <image> Is it red? assistant : "
    paligemma = load_captioner(dirs["paligemma"], device="cpu")
    assert paligemma.prompt == "caption en" and paligemma.text_for("caption en") == "caption en"
    asked = load_captioner(dirs["llava"], device="cpu", prompting=Prompting(prompt="Tags?"))
    assert asked.prompt == "Tags?"


def test_max_image_pixels_bounds_dynamic_resolution_tokens(dirs):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 290, 3), np.uint8))
    default = load_captioner(dirs["qwen2_vl"], device="cpu")
    assert default.max_pixels == 56 * 56  # the processor's own max_pixels
    image = default.preprocess(big)
    assert image.size[0] * image.size[1] <= 56 * 56
    assert default.inputs([image], ["hi"])["image_grid_thw"].tolist() == [[1, 4, 4]]

    bound = 28 * 28 * 16
    wider = load_captioner(
        dirs["qwen2_vl"], device="cpu", prompting=Prompting(max_image_pixels=bound)
    )
    image = wider.preprocess(big)
    assert image.size[0] * image.size[1] <= bound
    assert wider.inputs([image], ["hi"])["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert wider.image_size == int(bound**0.5)  # decode drafts JPEGs down to this


def read_rows(output) -> list[dict]:
    run_dir = RunDir(str(output))
    return [r for p in run_dir.parts() for r in pq.read_table(run_dir.fs.open(p)).to_pylist()]


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("family", FAMILIES)
def test_run_with_questions_then_search(family, dirs, corpus, tmp_path):
    out = tmp_path / "out"
    result = cli(
        "run", corpus, "-o", out, "--captioner", dirs[family], "--embedder", dirs["clip"],
        "--ask", "has_text=Is there any text in this image?", "--ask", "count=How many?",
        "--max-caption-tokens", "5", "--batch-size", "4", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "seen 6: written 5, failed 1" in result.output
    rows = read_rows(out)
    assert len(rows) == 5
    schema = pq.read_schema(RunDir(str(out)).fs.open(RunDir(str(out)).parts()[0]))
    assert str(schema.field("has_text").type) == "string"
    for row in rows:
        assert isinstance(row["caption"], str) and isinstance(row["has_text"], str)
        assert isinstance(row["count"], str)

    # the answers are what the captioner answers for that image, alone
    cap = load_captioner(dirs[family], device="cpu")
    row = rows[0]
    image = cap.preprocess(Image.open(row["uri"]).convert("RGB"))
    alone = cap.answers([image], ["Is there any text in this image?"], max_tokens=5)[0][0]
    assert alone == row["has_text"]

    manifest = json.loads((out / "manifest.json").read_text())
    described = manifest["models"]["captioner"]["config"]
    assert described["kind"] == "prompted" and described["prompt"] == cap.prompt
    assert described["asks"] == {
        "has_text": "Is there any text in this image?",
        "count": "How many?",
    }
    assert manifest["config"]["asks"] == [["has_text", "Is there any text in this image?"],
                                          ["count", "How many?"]]  # fmt: skip

    answer = row["has_text"].replace("'", "''")
    found = cli("search", "dog", "--index", out, "-k", "5", "--json",
                "--where", f"has_text = '{answer}'", "--columns", "has_text")  # fmt: skip
    assert found.exit_code == 0, found.output
    hits = [json.loads(line) for line in found.output.splitlines()]
    assert hits and all(h["columns"]["has_text"] == row["has_text"] for h in hits)
    assert row["uri"] in {h["uri"] for h in hits}


def test_each_image_is_preprocessed_once_however_many_questions(
    dirs, corpus, tmp_path, monkeypatch
):
    import functools

    from transformers import CLIPImageProcessor  # the tiny LLaVA's

    calls: list[tuple[int, int]] = []
    generates: list[int] = []
    image_passes: list[int] = []
    preprocess, generate = PromptedCaptioner.preprocess, PromptedCaptioner._generate
    process_images = CLIPImageProcessor.__call__

    def counting_preprocess(self, image):
        calls.append(image.size)
        return preprocess(self, image)

    def counting_generate(self, inputs, *args, **kw):
        generates.append(len(inputs["input_ids"]))
        return generate(self, inputs, *args, **kw)

    def counting_images(self, images, *args, **kw):
        image_passes.append(len(images))
        return process_images(self, images, *args, **kw)

    monkeypatch.setattr(PromptedCaptioner, "preprocess", counting_preprocess)
    monkeypatch.setattr(PromptedCaptioner, "_generate", counting_generate)
    monkeypatch.setattr(CLIPImageProcessor, "__call__", counting_images)
    from transformers.models.llava.modeling_llava import LlavaModel

    encoded: list[int] = []
    encode = LlavaModel.get_image_features

    @functools.wraps(encode)  # generate reads the signature
    def counting_vision(self, pixel_values, *args, **kw):
        encoded.append(len(pixel_values))
        return encode(self, pixel_values, *args, **kw)

    monkeypatch.setattr(LlavaModel, "get_image_features", counting_vision)
    asks = (("a", "Is it red?"), ("b", "How many?"), ("c", "Is there text?"))
    config = RunConfig(
        source=str(corpus), output=str(tmp_path / "o"), captioner=dirs["llava"],
        embedder=dirs["clip"], max_caption_tokens=3, batch_size=8, progress=False,
        build_index=False, prompting=Prompting(asks=asks),
    )  # fmt: skip
    summary = run(config)
    assert summary.written == 5
    assert len(calls) == 5  # once per image, not once per (image, question)
    assert image_passes == [5]  # the image processor: once, for the caption and 3 questions
    assert encoded == [5]  # the vision tower: once per image
    assert generates == [5 * 4]  # one generate call: the caption and 3 answers of 5 images


def test_rerun_with_another_prompt_is_refused_unless_overwrite(dirs, corpus, tmp_path):
    out = tmp_path / "out"
    base = ["run", corpus, "-o", out, "--captioner", dirs["llava"], "--embedder", "none",
            "--max-caption-tokens", "3", "--no-progress"]  # fmt: skip
    assert cli(*base, "--prompt", "What is it?").exit_code == 0
    again = cli(*base, "--prompt", "What is it?")
    assert again.exit_code == 0 and "0 to process" in again.output
    other = cli(*base, "--prompt", "Name the colours.")
    assert other.exit_code == 1
    assert "differs in prompt" in other.output and len(other.output.strip().splitlines()) == 1
    replaced = cli(*base, "--prompt", "Name the colours.", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["captioner"]["config"]["prompt"] == "Name the colours."


def test_candidates_keep_the_embedders_best(dirs, corpus, tmp_path):
    out = tmp_path / "out"
    result = cli("run", corpus, "-o", out, "--captioner", dirs["llava"], "--embedder",
                 dirs["clip"], "--candidates", "3", "--max-caption-tokens", "4",
                 "--no-progress", "--no-index")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    schema = pq.read_schema(RunDir(str(out)).fs.open(RunDir(str(out)).parts()[0]))
    assert str(schema.field("caption_score").type) == "float"
    cap = load_captioner(dirs["llava"], device="cpu")
    emb = load_embedder(dirs["clip"], device="cpu")
    picked_other_than_first = 0
    for row in rows:
        pil = Image.open(row["uri"]).convert("RGB")
        options = cap.candidates([cap.preprocess(pil)], 3, max_tokens=4)[0]
        image_vec = emb.embed_images(torch.stack([emb.preprocess(pil)]))[0]
        sims = emb.embed_texts(options) @ image_vec
        assert row["caption"] == options[int(np.argmax(sims))]
        assert row["caption_score"] == pytest.approx(float(sims.max()), abs=1e-5)
        picked_other_than_first += row["caption"] != options[0]
    assert picked_other_than_first > 0  # the re-ranking changed some captions


def test_an_image_the_model_cannot_take_fails_alone(dirs, tmp_path, caplog):
    """Qwen2-VL refuses images with an aspect ratio over 200: that image becomes a failure row
    with stage `infer`, after its batch was halved down to it; the others are written."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"ok{i}.png").write_bytes(image_bytes((40, 30 + 5 * i), "PNG", i))
    (src / "strip.png").write_bytes(image_bytes((1200, 3), "PNG", 9))
    config = RunConfig(
        source=str(src), output=str(tmp_path / "o"), captioner=dirs["qwen2_vl"],
        embedder="none", max_caption_tokens=3, batch_size=4, progress=False,
        max_pixels=10**7,
    )  # fmt: skip
    with caplog.at_level("WARNING"):
        summary = run(config)
    assert summary.written == 3 and summary.failed == 1
    said = [r.getMessage() for r in caplog.records if "retrying as batches" in r.getMessage()]
    assert said and "batch of 4 failed" in said[0] and "batches of 2 and 2" in said[0]
    run_dir = RunDir(str(tmp_path / "o"))
    failed = pq.read_table(run_dir.fs.open(run_dir.failed_parts()[0])).to_pylist()
    assert [(f["uri"].rsplit("/", 1)[-1], f["stage"]) for f in failed] == [("strip.png", "infer")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--captioner", "mini", "--prompt", "Hi"], "'mini' (vlpipe-mini) takes no prompt"),
        (["--captioner", "mini", "--ask", "a=Why?"], "takes no prompt"),
        (["--captioner", "BLIP", "--ask", "a=Why?"], "(blip) takes no prompt"),
        (["--captioner", "LLAVA", "--ask", "caption=Why?"], "a column named 'caption'"),
        (["--captioner", "LLAVA", "--ask", "a=x", "--ask", "a=y"], "--ask a is given twice"),
        (["--captioner", "LLAVA", "--ask", "no question"], "expected NAME=QUESTION"),
        (["--captioner", "CLIP"], "is not a supported captioner (vlpipe supports blip, git"),
        (["--captioner", "LLAVA", "--candidates", "2", "--embedder", "none"], "needs an embedder"),
    ],
)
def test_bad_prompted_options_are_one_line(args, message, dirs, corpus, tmp_path):
    names = {"BLIP": dirs["blip"], "LLAVA": dirs["llava"], "CLIP": dirs["clip"]}
    args = [names.get(a, a) for a in args]
    result = cli("run", corpus, "-o", tmp_path / "o", "--no-progress", *args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o" / "parts").exists()


def test_prompted_settings_parse():
    from vlpipe.models.prompting import parse_asks

    assert parse_asks(["has_text=Is there text? Answer yes=1 or no"]) == (
        ("has_text", "Is there text? Answer yes=1 or no"),
    )
    with pytest.raises(VlpipeError):
        parse_asks(["1bad=Why?"])


# --- vlpipe ask and /api/ask ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def asked_run(dirs, corpus, tmp_path_factory):
    """A LLaVA run with one question, indexed by the tiny CLIP."""
    out = tmp_path_factory.mktemp("asked") / "out"
    result = cli("run", corpus, "-o", out, "--captioner", dirs["llava"], "--embedder",
                 dirs["clip"], "--ask", "red=Is it red?", "--max-caption-tokens", "4",
                 "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_ask_answers_each_search_hit_with_the_model(family, dirs, asked_run):
    model = [] if family == "llava" else ["--model", dirs[family]]  # llava: the run's own
    result = cli("ask", "How many dogs?", "--index", asked_run, "--about", "dog", "-k", "3",
                 "--json", "--max-tokens", "5", *model)  # fmt: skip
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.output.splitlines()]
    searched = cli("search", "dog", "--index", asked_run, "-k", "3", "--json")
    hits = [json.loads(line) for line in searched.output.splitlines()]
    assert [a["uri"] for a in answers] == [h["uri"] for h in hits]
    assert [a["rank"] for a in answers] == [1, 2, 3] and all("score" in a for a in answers)

    cap = load_captioner(dirs[family], device="cpu")
    for answer in answers:
        image = cap.preprocess(Image.open(answer["uri"]).convert("RGB"))
        assert answer["answer"] == cap.answers([image], ["How many dogs?"], 5)[0][0]

    table = cli("ask", "How many dogs?", "--index", asked_run, "-k", "2", "--max-tokens", "5",
                *model)  # fmt: skip
    assert table.exit_code == 0, table.output
    header, *lines = table.output.strip().splitlines()
    assert header.split() == ["rank", "uri", "answer"] and len(lines) == 2


def test_ask_about_one_image_and_with_a_filter(dirs, asked_run, corpus):
    image = corpus / "img2.png"
    one = cli("ask", "Is it red?", "--image", image, "--model", dirs["qwen2_vl"], "--json")
    assert one.exit_code == 0, one.output
    [answer] = [json.loads(line) for line in one.output.splitlines()]
    cap = load_captioner(dirs["qwen2_vl"], device="cpu")
    expected = cap.answers([cap.preprocess(Image.open(image).convert("RGB"))], ["Is it red?"])
    assert answer == {"question": "Is it red?", "uri": str(image), "answer": expected[0][0]}

    rows = read_rows(asked_run)
    value = rows[0]["red"].replace("'", "''")
    filtered = cli("ask", "Why?", "--index", asked_run, "--where", f"red = '{value}'", "--json",
                   "--max-tokens", "2")  # fmt: skip
    assert filtered.exit_code == 0, filtered.output
    uris = {json.loads(line)["uri"] for line in filtered.output.splitlines()}
    assert uris == {r["uri"] for r in rows if r["red"] == rows[0]["red"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "mini"], "'mini' (vlpipe-mini) takes no prompt or question"),
        (["--model", "BLIP"], "(blip) takes no prompt or question"),
        (["-k", "0"], "-k must be between 1 and 200"),
        (["--image", "missing.jpg", "--model", "LLAVA"], "cannot read image missing.jpg"),
    ],
)
def test_ask_refusals_are_one_line(args, message, dirs, asked_run):
    names = {"BLIP": dirs["blip"], "LLAVA": dirs["llava"]}
    args = [names.get(a, a) for a in args]
    index = [] if "--image" in args else ["--index", asked_run]
    result = cli("ask", "Why?", *index, *args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_ask_refuses_a_run_whose_captioner_takes_no_question(dirs, corpus, tmp_path):
    from starlette.testclient import TestClient

    from vlpipe.search.searcher import Searcher
    from vlpipe.serve.app import create_app
    from vlpipe.serve.thumbnails import ThumbnailCache

    out = tmp_path / "out"
    made = cli("run", corpus, "-o", out, "--captioner", dirs["blip"], "--embedder",
               dirs["clip"], "--max-caption-tokens", "3", "--no-progress")  # fmt: skip
    assert made.exit_code == 0, made.output
    result = cli("ask", "Why?", "--index", out)
    assert result.exit_code == 1
    assert "cannot answer questions: pass --model with a prompted model" in result.output
    assert len(result.output.strip().splitlines()) == 1

    searcher = Searcher.open(str(out))
    plain = TestClient(create_app(searcher, ThumbnailCache(tmp_path / "t")))
    refused = plain.get("/api/ask", params={"q": "Why?", "k": 2})
    assert refused.status_code == 400 and "cannot answer questions" in refused.json()["error"]
    app = create_app(searcher, ThumbnailCache(tmp_path / "t"), ask_model=dirs["llava"])
    answered = TestClient(app).get("/api/ask", params={"q": "Why?", "k": 2})
    assert answered.status_code == 200, answered.text
    assert all(isinstance(r["answer"], str) for r in answered.json()["results"])


def test_api_ask_and_answer_columns_on_search(dirs, asked_run, tmp_path):
    from starlette.testclient import TestClient

    from vlpipe.search.searcher import Searcher
    from vlpipe.serve.app import Limits, create_app
    from vlpipe.serve.thumbnails import ThumbnailCache

    app = create_app(Searcher.open(str(asked_run)), ThumbnailCache(tmp_path / "t"), Limits(max_k=4))
    client = TestClient(app)
    response = client.get("/api/ask", params={"q": "How many?", "about": "dog", "k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    cli_answers = cli("ask", "How many?", "--index", asked_run, "--about", "dog", "-k", "2",
                      "--json")  # fmt: skip
    expected = [json.loads(line) for line in cli_answers.output.splitlines()]
    got = [(r["uri"], r["answer"]) for r in body["results"]]
    assert got == [(e["uri"], e["answer"]) for e in expected]
    assert all(r["thumb"].startswith("/thumb/") for r in body["results"])

    assert client.get("/api/ask", params={"q": "x", "k": 5}).status_code == 400  # over max_k
    assert client.get("/api/ask", params={"q": "x" * 501}).status_code == 400
    assert client.get("/api/ask").status_code == 400

    rows = {r["uri"]: r["red"] for r in read_rows(asked_run)}
    found = client.get("/api/search", params={"q": "dog", "k": 3}).json()["results"]
    assert found and all(h["columns"]["red"] == rows[h["uri"]] for h in found)


def test_ask_name_clashing_with_a_source_column(dirs, corpus, tmp_path):
    """A manifest column is refused at planning, before anything is written; a tar's .json key
    (known only when read) moves aside to json.NAME."""
    import io
    import tarfile

    import pyarrow as pa

    manifest = tmp_path / "list.parquet"
    uris = [str(corpus / "img0.png"), str(corpus / "img1.png")]
    pq.write_table(pa.table({"uri": uris, "red": ["a", "b"]}), manifest)
    out = tmp_path / "out"
    args = ["--captioner", dirs["llava"], "--embedder", "none", "--max-caption-tokens", "3",
            "--no-progress", "--ask", "red=Is it red?"]  # fmt: skip
    refused = cli("run", manifest, "-o", out, *args)
    assert refused.exit_code == 1
    assert "a column named 'red' already exists" in refused.output
    assert not (out / "manifest.json").exists()
    kept = cli("run", manifest, "-o", out, *args, "--columns", "")
    assert kept.exit_code == 0, kept.output

    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("000.png", (corpus / "img0.png").read_bytes()),
                           ("000.json", json.dumps({"red": "from the tar"}).encode())):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    result = cli("run", shard, "-o", tmp_path / "tar-out", *args)
    assert result.exit_code == 0, result.output
    [row] = read_rows(tmp_path / "tar-out")
    assert row["json.red"] == "from the tar" and isinstance(row["red"], str)


def test_ask_about_a_hit_whose_image_is_gone(dirs, corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("img0.png", "img1.png"):
        (src / name).write_bytes((corpus / name).read_bytes())
    out = tmp_path / "out"
    made = cli("run", src, "-o", out, "--captioner", dirs["llava"], "--embedder", dirs["clip"],
               "--max-caption-tokens", "3", "--no-progress")  # fmt: skip
    assert made.exit_code == 0, made.output
    (src / "img1.png").unlink()
    result = cli("ask", "Why?", "--index", out, "-k", "2", "--json", "--max-tokens", "3")
    assert result.exit_code == 0, result.output
    by_uri = {a["uri"]: a for a in map(json.loads, result.output.splitlines())}
    gone, kept = by_uri[str(src / "img1.png")], by_uri[str(src / "img0.png")]
    assert gone["answer"] is None and gone["error"]
    assert isinstance(kept["answer"], str) and "error" not in kept
    table = cli("ask", "Why?", "--index", out, "-k", "2", "--max-tokens", "3")
    assert "(no answer: " in table.output
