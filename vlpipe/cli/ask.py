"""`vlpipe ask QUESTION --index OUT`: a prompted model answers QUESTION about the top-k images
of a search (or about one --image); prints rank, uri, answer, or JSON lines with --json."""

from __future__ import annotations

import json

import click

from vlpipe.errors import VlpipeError

#: most hits one question is asked about (each costs a generate call's share)
MAX_K = 200


@click.command("ask")
@click.argument("question")
@click.option("--index", "index", default=None, help="Run directory or its index/ directory.")
@click.option("--about", default=None, help="Search for this text [default: the question].")
@click.option("--image", "image", default=None, help="Ask about this image file instead.")
@click.option("-k", "k", type=int, default=20, show_default=True, help=f"Hits to ask, 1..{MAX_K}.")
@click.option("--where", default=None, help="Only search rows matching this filter.")
@click.option(
    "--model", default=None,
    help="A prompted model (hub id or directory) [default: the run's captioner, if prompted].",
)  # fmt: skip
@click.option("--max-tokens", type=int, default=30, show_default=True, help="Answer length bound.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit: hit + answer.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
def command(
    question: str,
    index: str | None,
    about: str | None,
    image: str | None,
    k: int,
    where: str | None,
    model: str | None,
    max_tokens: int,
    as_json: bool,
    device: str,
) -> None:
    """Answer QUESTION about each of the top-k images of a search (--about TEXT, default the
    question itself) in --index, or about one --image FILE."""
    from vlpipe.search.ask import Asker

    if not 1 <= k <= MAX_K:
        raise VlpipeError(f"-k must be between 1 and {MAX_K}, got {k}")
    if max_tokens < 1:
        raise VlpipeError("--max-tokens must be at least 1")
    if image is None and index is None:
        raise VlpipeError("give --index (ask about search results) or --image FILE")
    if image is not None and (about is not None or where is not None):
        raise VlpipeError("--about and --where pick search results; with --image there are none")
    asker = Asker.open(index, model, device, max_tokens)
    if image is not None:
        from vlpipe.cli.search import _read_image

        answers = asker.about_images(question, [_read_image(image)], [image])
    else:
        answers = asker.about_hits(question, about, k, where)
    if as_json:
        for answer in answers:
            click.echo(json.dumps({"question": question, **answer.to_dict()}))
        return
    click.echo(format_answers(answers))


def format_answers(answers: list) -> str:
    """rank, uri, answer (or the reason an image got none)."""
    width = max([len("uri"), *(len(a.uri) for a in answers)])
    lines = [f"{'rank':>4}  {'uri':<{width}}  answer"]
    for i, a in enumerate(answers, 1):
        rank = a.hit.rank if a.hit is not None else i
        text = a.answer if a.error is None else f"(no answer: {a.error})"
        lines.append(f"{rank:>4}  {a.uri:<{width}}  {text}")
    return "\n".join(lines)
