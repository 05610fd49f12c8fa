"""`vlpipe run` with a prompted captioner: --ask columns then search, one preprocess and one
vision pass per image however many questions, a rerun with another prompt, --candidates re-ranked
by the embedder, an image the model cannot take, and the one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from bench.hf_tiny_prompted import FAMILIES
from tests.helpers.images import image_bytes
from tests.helpers.prompted import cli, count_vision_passes, read_rows
from vlpipe.api import run_and_index as run
from vlpipe.models.prompted import PromptedCaptioner
from vlpipe.models.prompting import Prompting
from vlpipe.models.registry import load_captioner, load_embedder
from vlpipe.pipeline.options import RunConfig
from vlpipe.rundir import RunDir


@pytest.mark.parametrize("family", FAMILIES)
def test_run_with_questions_then_search(family, prompted_dirs, prompted_corpus, tmp_path):
    out = tmp_path / "out"
    result = cli(
        "run", prompted_corpus, "-o", out, "--captioner", prompted_dirs[family],
        "--embedder", prompted_dirs["clip"],
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
    cap = load_captioner(prompted_dirs[family], device="cpu")
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
    prompted_dirs, prompted_corpus, tmp_path, monkeypatch
):

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

    encoded = count_vision_passes(monkeypatch, LlavaModel)
    asks = (("a", "Is it red?"), ("b", "How many?"), ("c", "Is there text?"))
    config = RunConfig(
        source=str(prompted_corpus), output=str(tmp_path / "o"), captioner=prompted_dirs["llava"],
        embedder=prompted_dirs["clip"], max_caption_tokens=3, batch_size=8, progress=False,
        build_index=False, prompting=Prompting(asks=asks),
    )  # fmt: skip
    summary = run(config)
    assert summary.written == 5
    assert len(calls) == 5  # once per image, not once per (image, question)
    # planning tries the prompt and each question on a blank image (no weights); then the image
    # processor runs once for the batch, for the caption and 3 questions
    assert image_passes == [1] * 4 + [5]
    assert encoded == [5]  # the vision tower: once per image
    assert generates == [5 * 4]  # one generate call: the caption and 3 answers of 5 images


def test_rerun_with_another_prompt_is_refused_unless_overwrite(
    prompted_dirs, prompted_corpus, tmp_path
):
    out = tmp_path / "out"
    base = ["run", prompted_corpus, "-o", out, "--captioner", prompted_dirs["llava"],
            "--embedder", "none", "--max-caption-tokens", "3", "--no-progress"]  # fmt: skip
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


def test_candidates_keep_the_embedders_best(prompted_dirs, prompted_corpus, tmp_path):
    out = tmp_path / "out"
    result = cli("run", prompted_corpus, "-o", out, "--captioner", prompted_dirs["llava"],
                 "--embedder", prompted_dirs["clip"], "--candidates", "3",
                 "--max-caption-tokens", "4", "--no-progress", "--no-index")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    schema = pq.read_schema(RunDir(str(out)).fs.open(RunDir(str(out)).parts()[0]))
    assert str(schema.field("caption_score").type) == "float"
    cap = load_captioner(prompted_dirs["llava"], device="cpu")
    emb = load_embedder(prompted_dirs["clip"], device="cpu", backend="auto")  # as the run embeds
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


def test_an_image_the_model_cannot_take_fails_alone(prompted_dirs, tmp_path, caplog):
    """Qwen2-VL refuses images with an aspect ratio over 200: that image becomes a failure row
    with stage `infer`, after its batch was halved down to it; the others are written."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"ok{i}.png").write_bytes(image_bytes((40, 30 + 5 * i), "PNG", i))
    (src / "strip.png").write_bytes(image_bytes((1200, 3), "PNG", 9))
    config = RunConfig(
        source=str(src), output=str(tmp_path / "o"), captioner=prompted_dirs["qwen2_vl"],
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
def test_bad_prompted_options_are_one_line(args, message, prompted_dirs, prompted_corpus, tmp_path):
    names = {
        "BLIP": prompted_dirs["blip"],
        "LLAVA": prompted_dirs["llava"],
        "CLIP": prompted_dirs["clip"],
    }
    args = [names.get(a, a) for a in args]
    result = cli("run", prompted_corpus, "-o", tmp_path / "o", "--no-progress", *args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o" / "parts").exists()


def test_ask_name_clashing_with_a_source_column(prompted_dirs, prompted_corpus, tmp_path):
    """A manifest column is refused at planning, before anything is written; a tar's .json key
    (known only when read) moves aside to json.NAME."""
    import io
    import tarfile

    import pyarrow as pa

    manifest = tmp_path / "list.parquet"
    uris = [str(prompted_corpus / "img0.png"), str(prompted_corpus / "img1.png")]
    pq.write_table(pa.table({"uri": uris, "red": ["a", "b"]}), manifest)
    out = tmp_path / "out"
    args = ["--captioner", prompted_dirs["llava"], "--embedder", "none",
            "--max-caption-tokens", "3", "--no-progress", "--ask", "red=Is it red?"]  # fmt: skip
    refused = cli("run", manifest, "-o", out, *args)
    assert refused.exit_code == 1
    assert "a column named 'red' already exists" in refused.output
    assert not (out / "manifest.json").exists()
    kept = cli("run", manifest, "-o", out, *args, "--columns", "")
    assert kept.exit_code == 0, kept.output

    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("000.png", (prompted_corpus / "img0.png").read_bytes()),
                           ("000.json", json.dumps({"red": "from the tar"}).encode())):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    result = cli("run", shard, "-o", tmp_path / "tar-out", *args)
    assert result.exit_code == 0, result.output
    [row] = read_rows(tmp_path / "tar-out")
    assert row["json.red"] == "from the tar" and isinstance(row["red"], str)
