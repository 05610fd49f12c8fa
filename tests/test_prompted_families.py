"""Florence-2 (an encoder-decoder driven by task tokens) and LLaVA-OneVision ("anyres" tiling) as
prompted captioners, on tiny random models built offline: parity with a plain `model.generate`,
`vlpipe run` with --ask then `vlpipe search`, `vlpipe ask`, and what is particular to each
(Florence-2's task tokens and right padding, OneVision's decode size)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from bench import hf_tiny_prompted
from bench.hf_tiny import build_tiny_clip
from tests.helpers.images import image_bytes
from tests.helpers.prompted import (
    assert_captions_decode,
    cli,
    count_image_processor_calls,
    count_vision_passes,
    read_rows,
    small_images,
)
from vlpipe.models.prompted import PromptedCaptioner
from vlpipe.models.registry import load_captioner

FAMILIES = hf_tiny_prompted.MORE_FAMILIES
QUESTION = "Is there any text in this image?"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    out = {f: hf_tiny_prompted.build(f, root / f) for f in FAMILIES}
    out["clip"] = build_tiny_clip(root / "clip")
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three small images of different shapes and a broken file."""
    root = tmp_path_factory.mktemp("corpus")
    for i, size in enumerate([(50, 40), (30, 60), (56, 56)]):
        (root / f"img{i}.png").write_bytes(image_bytes(size, "PNG", i))
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def captioners(dirs) -> dict[str, PromptedCaptioner]:
    return {f: load_captioner(dirs[f], device="cpu") for f in FAMILIES}


def alone(cap: PromptedCaptioner, image: Image.Image, prompt: str, max_tokens: int) -> str:
    """What the captioner answers for this image and prompt in a batch of its own."""
    return cap.generate([cap.preprocess(image.convert("RGB"))], [prompt], max_tokens)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_caption_equals_plain_generate_token_for_token(family, dirs, captioners):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cap = captioners[family]
    images = small_images()
    pixels = cap.collate([cap.preprocess(im) for im in images])
    ours = cap.generate_ids(pixels, [cap.prompt] * len(images), max_tokens=8)

    processor = AutoProcessor.from_pretrained(dirs[family])
    model = AutoModelForImageTextToText.from_pretrained(dirs[family]).eval()
    text = cap.prompt  # Florence-2: the task token, as its processor takes it
    if processor.chat_template:
        turn = [{"type": "image"}, {"type": "text", "text": cap.prompt}]
        conversation = [{"role": "user", "content": turn}]
        text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=images, text=[text] * len(images), padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=8)
    start = 0 if model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
    theirs = out[:, start:].tolist()
    assert ours == theirs
    assert len({tuple(t) for t in theirs}) > 1  # the images give different answers

    assert_captions_decode(cap, pixels, processor.tokenizer, theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_questions_in_one_batch_answer_as_each_alone(family, captioners, monkeypatch):
    """Prompts of different lengths share one batch (one image-processor pass) and each answer
    is what that image and prompt get alone: for Florence-2 only if its encoder input is padded
    on the right (BART numbers positions from the first token)."""
    cap = captioners[family]
    images = small_images()
    prompts = [cap.prompt, "How many?", QUESTION]
    calls = count_image_processor_calls(monkeypatch, cap)
    merged = cap.inputs_per_prompt(images, prompts)
    assert len(calls) == 1
    mask = merged["attention_mask"]
    assert not mask.all()  # the prompts' lengths differ: there is padding
    first, last = bool(mask[:, 0].all()), bool(mask[:, -1].all())
    assert (first, last) == ((True, False) if family == "florence2" else (False, True))
    answers = cap.answers(images, prompts, max_tokens=5)
    assert answers == [[alone(cap, im, p, 5) for p in prompts] for im in images]


@pytest.mark.parametrize("family", FAMILIES)
def test_questions_share_one_vision_pass(family, captioners, monkeypatch):
    """The vision tower encodes each image once for all its prompts, and the answers are the
    same as when every copy is encoded."""
    from vlpipe.models import prompted_batch

    cap = captioners[family]
    images = small_images()
    prompts = [cap.prompt, "How many?", QUESTION]
    encoded = count_vision_passes(monkeypatch, type(cap.model.model))
    shared = cap.answers(images, prompts, max_tokens=5)
    monkeypatch.setattr(prompted_batch, "SHARED_VISION", frozenset())
    assert cap.answers(images, prompts, max_tokens=5) == shared
    assert encoded == [3, 9]  # once per image, then once per (image, prompt)


def test_florence2_task_tokens(dirs, captioners, corpus, tmp_path):
    """<CAPTION> is the default prompt, any task token is a prompt or question, free text goes
    through as it is; a task token with other text (which its processor refuses) is one line
    at planning and in `vlpipe ask`, before any image is read."""
    cap = captioners["florence2"]
    assert cap.prompt == "<CAPTION>" and cap.text_for("<OCR>") == "<OCR>"
    task = cap.inputs([small_images()[0]], ["<CAPTION>"])["input_ids"]
    question = cap.inputs([small_images()[0]], ["What does the image describe?"])["input_ids"]
    assert torch.equal(task, question)  # the processor turned the token into its question

    out = tmp_path / "out"
    base = ["run", corpus, "-o", out, "--captioner", dirs["florence2"], "--embedder", "none",
            "--max-caption-tokens", "4", "--no-progress"]  # fmt: skip
    refused = cli(*base, "--prompt", "<CAPTION> of a dog")
    assert refused.exit_code == 1
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "cannot take the prompt '<CAPTION> of a dog'" in lines[0]
    assert "should be the only content" in lines[0] and not (out / "parts").exists()
    bad_ask = cli(*base, "--ask", "ocr=<OCR> please")
    assert bad_ask.exit_code == 1 and len(bad_ask.output.strip().splitlines()) == 1

    ran = cli(*base, "--prompt", "<MORE_DETAILED_CAPTION>", "--ask", "ocr=<OCR>")
    assert ran.exit_code == 0, ran.output
    rows = read_rows(out)
    assert len(rows) == 3
    for row in rows:
        image = Image.open(row["uri"])
        assert row["caption"] == alone(cap, image, "<MORE_DETAILED_CAPTION>", 4)
        assert row["ocr"] == alone(cap, image, "<OCR>", 4)

    image = corpus / "img0.png"
    asked = cli("ask", "<OD> where?", "--image", image, "--model", dirs["florence2"])
    assert asked.exit_code == 1
    assert len(asked.output.strip().splitlines()) == 1 and "cannot take the prompt" in asked.output


def test_onevision_decode_keeps_the_largest_tile_grid(captioners):
    """An "anyres" processor tiles an image up to its largest pinpoint (64 px here), so decode
    must keep that side, not the 32 px base view."""
    assert captioners["llava_onevision"].image_size == 64


@pytest.mark.parametrize("family", FAMILIES)
def test_run_with_questions_then_search_and_ask(family, dirs, captioners, corpus, tmp_path):
    out = tmp_path / "out"
    result = cli(
        "run", corpus, "-o", out, "--captioner", dirs[family], "--embedder", dirs["clip"],
        "--ask", f"has_text={QUESTION}", "--ask", "count=How many?",
        "--max-caption-tokens", "5", "--batch-size", "4", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "seen 4: written 3, failed 1" in result.output
    rows = read_rows(out)
    cap = captioners[family]
    for row in rows:  # the run's answers are each image's own
        image = Image.open(row["uri"])
        assert row["caption"] == alone(cap, image, cap.prompt, 5)
        assert row["has_text"] == alone(cap, image, QUESTION, 5)
        assert row["count"] == alone(cap, image, "How many?", 5)
    manifest = json.loads((out / "manifest.json").read_text())
    described = manifest["models"]["captioner"]["config"]
    assert described["kind"] == "prompted" and described["family"] == cap.family
    assert described["prompt"] == cap.prompt

    answer = rows[0]["has_text"].replace("'", "''")
    found = cli("search", "dog", "--index", out, "-k", "3", "--json",
                "--where", f"has_text = '{answer}'", "--columns", "has_text")  # fmt: skip
    assert found.exit_code == 0, found.output
    hits = [json.loads(line) for line in found.output.splitlines()]
    assert rows[0]["uri"] in {h["uri"] for h in hits}
    assert all(h["columns"]["has_text"] == rows[0]["has_text"] for h in hits)

    # vlpipe ask: the run's own captioner answers each hit, as it would alone
    asked = cli("ask", "How many dogs?", "--index", out, "--about", "dog", "-k", "3", "--json",
                "--max-tokens", "5")  # fmt: skip
    assert asked.exit_code == 0, asked.output
    answers = [json.loads(line) for line in asked.output.splitlines()]
    searched = cli("search", "dog", "--index", out, "-k", "3", "--json").output.splitlines()
    assert [a["uri"] for a in answers] == [json.loads(line)["uri"] for line in searched]
    for a in answers:
        assert a["answer"] == alone(cap, Image.open(a["uri"]), "How many dogs?", 5)
    image = corpus / "img1.png"
    one = cli("ask", QUESTION, "--image", image, "--model", dirs[family], "--max-tokens", "5",
              "--json")  # fmt: skip
    assert one.exit_code == 0, one.output
    assert json.loads(one.output)["answer"] == alone(cap, Image.open(image), QUESTION, 5)


def test_git_takes_no_prompt_or_question(corpus, tmp_path):
    """GIT captions unprompted: --prompt, --ask and `vlpipe ask --model` are one line each."""
    from bench.hf_tiny import build_tiny_git

    git = build_tiny_git(tmp_path / "git")
    for flags in (["--prompt", "Hi"], ["--ask", "a=Why?"]):
        result = cli("run", corpus, "-o", tmp_path / "o", "--captioner", git, "--embedder",
                     "none", "--no-progress", *flags)  # fmt: skip
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert "(git) takes no prompt or question" in lines[0]
    asked = cli("ask", "Why?", "--image", corpus / "img0.png", "--model", git)
    lines = asked.output.strip().splitlines()
    assert asked.exit_code == 1 and len(lines) == 1 and "(git) takes no prompt" in lines[0]
