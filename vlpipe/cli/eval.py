"""`vlpipe eval OUTPUT_DIR --captions CSV`: retrieval Recall@K and caption BLEU-4/CIDEr of a run."""

from __future__ import annotations

import json

import click

ROWS = [
    ("text -> image", "t2i"),
    ("image -> text", "i2t"),
]


@click.command("eval")
@click.argument("output_dir")
@click.option(
    "--captions",
    "captions_csv",
    required=True,
    help="CSV of reference captions with 'image' (file name) and 'caption' columns.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def command(output_dir: str, captions_csv: str, device: str, as_json: bool) -> None:
    """Score the run in OUTPUT_DIR against reference captions matched by image file name."""
    from vlpipe.eval.evaluate import evaluate_run

    scores = evaluate_run(output_dir, captions_csv, device=device)
    if as_json:
        click.echo(json.dumps(scores))
        return
    click.echo(
        f"{scores['n_images']} images, {scores['n_queries']} reference captions"
        + (
            f" ({scores['n_unmatched']} run images without references left out)"
            if scores["n_unmatched"]
            else ""
        )
    )
    click.echo(f"{'retrieval':<16}{'R@1':>8}{'R@5':>8}{'R@10':>8}")
    for label, key in ROWS:
        click.echo(f"{label:<16}" + "".join(f"{scores[f'{key}_r{k}']:>8.3f}" for k in (1, 5, 10)))
    click.echo(f"{'captions':<16}{'BLEU-4':>8}{'CIDEr':>8}")
    click.echo(f"{'':<16}{scores['bleu4']:>8.3f}{scores['cider']:>8.3f}")
