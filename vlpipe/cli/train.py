"""`vlpipe train --data DIR --output MODEL_DIR`: train vlpipe-mini on an image-caption corpus."""

from __future__ import annotations

import json

import click


@click.command("train")
@click.option(
    "--data",
    required=True,
    help="Directory with images/, captions.csv, splits.csv; or a manifest "
    "(CSV/Parquet/JSONL with uri and caption columns, optional split).",
)
@click.option("--output", required=True, help="Model directory to write (loadable as --model DIR).")
@click.option(
    "--cache",
    "cache_dir",
    default=None,
    help="Where tower features are cached [default: MODEL_DIR/cache].",
)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=None,
    help="Upper bound on epochs for both parts (early stopping may end sooner).",
)
@click.option(
    "--embed-epochs",
    type=click.IntRange(1),
    default=None,
    help="Epochs for the joint embedding (overrides --epochs).",
)
@click.option(
    "--caption-epochs",
    type=click.IntRange(1),
    default=None,
    help="Epochs for the captioner (overrides --epochs).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--unfreeze-last-stage/--frozen",
    default=True,
    show_default=True,
    help="Fine-tune the image tower's last stage and head conv on cached features, "
    "or keep the tower frozen.",
)
@click.option(
    "--tower",
    type=click.Choice(["lite0", "lite1", "lite2"]),
    default="lite0",
    show_default=True,
    help="ImageNet image tower: EfficientNet-Lite0 (224 px), the deeper Lite1 (240 px) or "
    "the deeper and wider Lite2 (260 px).",
)
@click.option(
    "--tail-stage",
    type=click.IntRange(0, 7),
    default=6,
    show_default=True,
    help="First image-tower stage to fine-tune (0-6; 7: only the head conv). Stages before it "
    "are cached once; a lower stage adapts more of the tower and caches larger maps.",
)
@click.option(
    "--crop",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of embedding batches trained on random crops of the cached feature maps.",
)
@click.option(
    "--lowres",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of embedding training images seen as a small photo would come: scaled to "
    "128-200 px on the short side, JPEG re-encoded, scaled back (a second cached view).",
)
@click.option(
    "--all-captions",
    is_flag=True,
    help="Train the embedding on every caption of each batch image as a positive "
    "(default: one caption drawn per image per step).",
)
@click.option(
    "--hard-negatives",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of embedding batches built from groups of images whose captions are alike "
    "(mined once from the training captions).",
)
@click.option(
    "--captions-per-image",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Captions of each image the captioner trains on per epoch.",
)
@click.option(
    "--dim", type=click.IntRange(8), default=256, show_default=True, help="Joint embedding size."
)
@click.option(
    "--beams",
    default="1,3",
    show_default=True,
    help="Beam widths to try; the best CIDEr on the held-out train images becomes the default"
    " (dev is reported for each).",
)
@click.option(
    "--max-train-images",
    type=click.IntRange(2),
    default=None,
    help="Use only the first N training images (quick experiments).",
)
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the dev metrics as one JSON object.")
def command(
    data,
    output,
    cache_dir,
    epochs,
    embed_epochs,
    caption_epochs,
    seed,
    unfreeze_last_stage,
    tower,
    tail_stage,
    crop,
    lowres,
    all_captions,
    hard_negatives,
    captions_per_image,
    dim,
    beams,
    max_train_images,
    threads,
    as_json,
) -> None:
    """Cache tower features, train the joint embedding and the captioner, evaluate on dev."""
    from vlpipe.errors import VlpipeError
    from vlpipe.train.run import TrainOptions, train

    try:
        beam_list = sorted({int(b) for b in beams.split(",")})
    except ValueError:
        raise VlpipeError(f"--beams {beams!r}: expected comma-separated integers") from None
    if not beam_list or min(beam_list) < 1:
        raise VlpipeError("--beams: beam widths must be at least 1")
    opts = TrainOptions(
        seed=seed,
        unfreeze=unfreeze_last_stage,
        tower=tower,
        tail_stage=tail_stage,
        crop=crop,
        lowres=lowres,
        all_captions=all_captions,
        hard_negatives=hard_negatives,
        captions_per_image=captions_per_image,
        dim=dim,
        beams=beam_list,
        max_train_images=max_train_images,
        threads=threads,
    )
    if epochs:
        opts.embed_epochs = opts.caption_epochs = epochs
    opts.embed_epochs = embed_epochs or opts.embed_epochs
    opts.caption_epochs = caption_epochs or opts.caption_epochs
    log = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    metrics = train(data, output, opts, cache_dir=cache_dir, log=log)
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        click.echo(f"model written to {output}")
