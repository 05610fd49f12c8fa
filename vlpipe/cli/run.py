"""`vlpipe run SOURCE --output DIR`: caption and embed every image, write parts, build the index."""

from __future__ import annotations

import click

from vlpipe.images import DEFAULT_MAX_PIXELS
from vlpipe.outputs.formats import DEFAULT as DEFAULT_FORMAT
from vlpipe.outputs.formats import FORMATS
from vlpipe.storage import DEFAULT_RETRIES


@click.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    epilog="Any other --option is passed to Beam (e.g. --runner dask --dask_client_address "
    "HOST:PORT, --runner DataflowRunner --project P --region R --temp_location gs://... "
    "--setup_file ./setup.py).",
)
@click.argument("source")
@click.option("-o", "--output", required=True, help="Output directory (local path or fsspec URL).")
@click.option(
    "--captioner", default="mini", show_default=True,
    help="mini, a model dir, a hub id, or none (embeddings only: no caption model runs).",
)  # fmt: skip
@click.option(
    "--embedder", default="mini", show_default=True,
    help="mini, a model dir, a hub id, open_clip:ARCH@TAG (or @/path/to/checkpoint.pt, "
    "open_clip:hf-hub:ORG/NAME), or none (captions only: no embeddings, no index).",
)  # fmt: skip
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-caption-tokens", type=int, default=30, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
    default="auto",
    help="auto: fp16 on GPU; bf16 on CPUs with native bf16 (vlpipe-mini), else fp32.",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "openvino"]),
    default="auto",
    help="CPU runtime of vlpipe-mini's image tower; auto: openvino when installed.",
)
@click.option("--decode-threads", type=int, default=4, show_default=True)
@click.option(
    "--shard-size",
    type=int,
    default=1000,
    show_default=True,
    help="Inputs per part, and about per listing page or manifest row range.",
)
@click.option("--workers", type=int, default=1, show_default=True, help="Local worker processes.")
@click.option("--embedding-dtype", type=click.Choice(["float16", "float32"]), default="float16")
@click.option("--min-size", type=int, default=0, help="Skip images whose shorter side is under PX.")
@click.option("--max-aspect", type=float, default=0.0, help="Skip images longer/shorter > R.")
@click.option(
    "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, show_default=True,
    help="Skip images of more pixels (also the decompression-bomb guard).",
)  # fmt: skip
@click.option(
    "--columns", default=None,
    help="Comma-separated source columns to keep in the output (default: all of them).",
)  # fmt: skip
@click.option("--save-thumbnails", type=int, default=0, metavar="PX",
              help="Store a JPEG thumbnail, PX on its longer side, in each row.")  # fmt: skip
@click.option(
    "--output-format", type=click.Choice(list(FORMATS)), default=DEFAULT_FORMAT,
    show_default=True, help="; ".join(f"{f.name}: {f.help}" for f in FORMATS.values()),
)  # fmt: skip
@click.option(
    "--prompt", default=None,
    help="What a prompted captioner is asked per image [default: the family's own, e.g."
    " 'Describe this image in one sentence.'].",
)  # fmt: skip
@click.option(
    "--ask", "asks", multiple=True, metavar="NAME=QUESTION",
    help="Also ask every image QUESTION; the answer goes to string column NAME (repeatable).",
)  # fmt: skip
@click.option(
    "--max-image-pixels", type=int, default=None,
    help="Prompted captioners: scale images down to at most this many pixels (bounds a"
    " dynamic-resolution model's image tokens) [default: the processor's own bound].",
)  # fmt: skip
@click.option(
    "--candidates", type=int, default=1, show_default=True,
    help="Generate N captions per image (beam search) and keep the one the embedder scores"
    " highest against the image (column caption_score); costs about N times the captioning.",
)  # fmt: skip
@click.option(
    "--score", "scores", multiple=True, metavar="NAME=SPEC",
    help="Add a float column NAME: a head over the embeddings (FILE.safetensors|.pth) or an"
    " image classifier's label probability (MODEL:LABEL, a hub id or local dir). Repeatable.",
)  # fmt: skip
@click.option(
    "--keep-metadata", is_flag=True,
    help="Copy image bytes exactly as read into outputs that copy them (WebDataset): by default"
    " the location, camera serial and other metadata are stripped (pixels untouched).",
)  # fmt: skip
@click.option(
    "--detect-faces", is_flag=True,
    help="Find faces (MTCNN, facenet-pytorch's weights): columns faces and face_boxes.",
)  # fmt: skip
@click.option(
    "--blur-faces", is_flag=True,
    help="Blur detected faces in every exported image and stored thumbnail (implies"
    " --detect-faces).",
)  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace a previous run in --output.")
@click.option("--retry-failed", is_flag=True, help="Process again the inputs that failed before.")
@click.option(
    "--shared-output",
    is_flag=True,
    help="A local --output that every worker of a remote runner mounts (else refused).",
)
@click.option(
    "--storage-retries", type=int, default=DEFAULT_RETRIES, show_default=True,
    help="Attempts per storage request (S3: botocore's standard mode, exponential backoff with "
    "jitter) before a transient error (503 SlowDown, 5xx, dropped connection) fails the run.",
)  # fmt: skip
@click.option(
    "--take-over", is_flag=True,
    help="Take --output from the run that holds its lease (one that is surely gone).",
)  # fmt: skip
@click.option("--no-index", is_flag=True, help="Do not build the FAISS index at the end.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def command(ctx: click.Context, source: str, output: str, **flags) -> None:
    """Caption and embed every image of SOURCE: a directory, glob, fsspec URL, manifest
    (.parquet/.csv/.jsonl) or WebDataset tar shards ('shards/{00000..00009}.tar')."""
    from vlpipe.api import run

    result = run(source, output, echo=click.echo, beam_args=ctx.args, **flags)
    for line in result.closing_lines():
        click.echo(line)
    if not result.last.ok:
        raise click.ClickException("not every input is accounted for; see the counts above")
