"""`vlpipe ask` and /api/ask: each search hit answered by a prompted model (the run's own or
--model), one image, a filter, the refusals, and a hit whose image is gone."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from bench.hf_tiny_prompted import FAMILIES
from tests.helpers.prompted import cli, read_rows
from vlpipe.models.registry import load_captioner


@pytest.fixture(scope="module")
def asked_run(prompted_dirs, prompted_corpus, tmp_path_factory):
    """A LLaVA run with one question, indexed by the tiny CLIP."""
    out = tmp_path_factory.mktemp("asked") / "out"
    result = cli("run", prompted_corpus, "-o", out, "--captioner", prompted_dirs["llava"],
                 "--embedder", prompted_dirs["clip"], "--ask", "red=Is it red?",
                 "--max-caption-tokens", "4", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_ask_answers_each_search_hit_with_the_model(family, prompted_dirs, asked_run):
    model = [] if family == "llava" else ["--model", prompted_dirs[family]]  # llava: the run's own
    result = cli("ask", "How many dogs?", "--index", asked_run, "--about", "dog", "-k", "3",
                 "--json", "--max-tokens", "5", *model)  # fmt: skip
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.output.splitlines()]
    searched = cli("search", "dog", "--index", asked_run, "-k", "3", "--json")
    hits = [json.loads(line) for line in searched.output.splitlines()]
    assert [a["uri"] for a in answers] == [h["uri"] for h in hits]
    assert [a["rank"] for a in answers] == [1, 2, 3] and all("score" in a for a in answers)

    cap = load_captioner(prompted_dirs[family], device="cpu")
    for answer in answers:
        image = cap.preprocess(Image.open(answer["uri"]).convert("RGB"))
        assert answer["answer"] == cap.answers([image], ["How many dogs?"], 5)[0][0]

    table = cli("ask", "How many dogs?", "--index", asked_run, "-k", "2", "--max-tokens", "5",
                *model)  # fmt: skip
    assert table.exit_code == 0, table.output
    header, *lines = table.output.strip().splitlines()
    assert header.split() == ["rank", "uri", "answer"] and len(lines) == 2


def test_ask_about_one_image_and_with_a_filter(prompted_dirs, asked_run, prompted_corpus):
    image = prompted_corpus / "img2.png"
    one = cli("ask", "Is it red?", "--image", image, "--model", prompted_dirs["qwen2_vl"], "--json")
    assert one.exit_code == 0, one.output
    [answer] = [json.loads(line) for line in one.output.splitlines()]
    cap = load_captioner(prompted_dirs["qwen2_vl"], device="cpu")
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
def test_ask_refusals_are_one_line(args, message, prompted_dirs, asked_run):
    names = {"BLIP": prompted_dirs["blip"], "LLAVA": prompted_dirs["llava"]}
    args = [names.get(a, a) for a in args]
    index = [] if "--image" in args else ["--index", asked_run]
    result = cli("ask", "Why?", *index, *args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_ask_refuses_a_run_whose_captioner_takes_no_question(
    prompted_dirs, prompted_corpus, tmp_path
):
    from starlette.testclient import TestClient

    from vlpipe.search.searcher import Searcher
    from vlpipe.serve.app import create_app
    from vlpipe.serve.thumbnails import ThumbnailCache

    out = tmp_path / "out"
    made = cli("run", prompted_corpus, "-o", out, "--captioner", prompted_dirs["blip"],
               "--embedder", prompted_dirs["clip"], "--max-caption-tokens", "3",
               "--no-progress")  # fmt: skip
    assert made.exit_code == 0, made.output
    result = cli("ask", "Why?", "--index", out)
    assert result.exit_code == 1
    assert "cannot answer questions: pass --model with a prompted model" in result.output
    assert len(result.output.strip().splitlines()) == 1

    searcher = Searcher.open(str(out))
    plain = TestClient(create_app(searcher, ThumbnailCache(tmp_path / "t")))
    refused = plain.get("/api/ask", params={"q": "Why?", "k": 2})
    assert refused.status_code == 400 and "cannot answer questions" in refused.json()["error"]
    app = create_app(searcher, ThumbnailCache(tmp_path / "t"), ask_model=prompted_dirs["llava"])
    answered = TestClient(app).get("/api/ask", params={"q": "Why?", "k": 2})
    assert answered.status_code == 200, answered.text
    assert all(isinstance(r["answer"], str) for r in answered.json()["results"])


def test_api_ask_and_answer_columns_on_search(prompted_dirs, asked_run, tmp_path):
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


def test_ask_about_a_hit_whose_image_is_gone(prompted_dirs, prompted_corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("img0.png", "img1.png"):
        (src / name).write_bytes((prompted_corpus / name).read_bytes())
    out = tmp_path / "out"
    made = cli("run", src, "-o", out, "--captioner", prompted_dirs["llava"], "--embedder",
               prompted_dirs["clip"], "--max-caption-tokens", "3", "--no-progress")  # fmt: skip
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
