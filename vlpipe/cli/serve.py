"""`vlpipe serve --index out/`: a local search page with thumbnails over a built index."""

from __future__ import annotations

import click

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@click.command("serve")
@click.option("--index", "index", required=True, help="Index directory or run output directory.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option(
    "--cache-dir",
    default=None,
    help="Thumbnail cache folder [default: ~/.cache/vlpipe/thumbs/<index hash>].",
)
@click.option("--max-upload-mb", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option(
    "--token",
    envvar="VLPIPE_TOKEN",
    show_envvar=True,
    default=None,
    help="Require this token (?token=, then a cookie; or Authorization: Bearer). Beyond "
    "loopback one is generated when none is given; on loopback none is required unless given.",
)
@click.option(
    "--ask-model", default=None,
    help="Prompted model answering /api/ask [default: the run's captioner, if prompted].",
)  # fmt: skip
@click.option(
    "--blur-faces", is_flag=True,
    help="Blur faces in every thumbnail served (the run's face_boxes, else faces found on it).",
)  # fmt: skip
def command(
    index: str,
    host: str,
    port: int,
    device: str,
    cache_dir: str | None,
    max_upload_mb: int,
    token: str | None,
    ask_model: str | None,
    blur_faces: bool,
) -> None:
    """Serve a search page and JSON API for the index at --index (Ctrl-C stops it)."""
    try:
        import uvicorn

        from vlpipe.serve.app import LOOPBACK_HOSTS, Limits, create_app
        from vlpipe.serve.token import TokenGate, new_token
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"vlpipe serve needs the 'serve' extra ({exc.name} is missing): "
            "pip install 'vlpipe[serve]'"
        ) from None
    from vlpipe.search.searcher import Searcher
    from vlpipe.serve.thumbnails import ThumbnailCache, default_cache_dir

    searcher = Searcher.open(index, device=device)
    searcher.search_text(["warm up"], 1)  # load the text tower now, not on the first query
    thumbs = ThumbnailCache(cache_dir or default_cache_dir(index))
    if blur_faces:
        from vlpipe.serve.blurred import VARIANT, FaceBlur

        blur = FaceBlur(searcher)
        blur.check()  # a detector that cannot load: one line now, not a broken page
        thumbs.finish, thumbs.variant = blur, VARIANT
    local = host in LOOPBACK
    app = create_app(
        searcher,
        thumbs,
        Limits(max_upload_bytes=max_upload_mb * 1024 * 1024),
        allowed_hosts=LOOPBACK_HOSTS if local else None,
        ask_model=ask_model,
    )
    if token is not None and not token.strip():
        raise click.BadParameter("the token is empty", param_hint="--token")
    token = token or (None if local else new_token())
    if token:
        app = TokenGate(app, token)
    if not local:
        click.echo(
            f"listening on {host}: anyone who has the URL below (its token) can search the index"
            " and see its images",
            err=True,
        )
    query = f"?token={token}" if token else ""
    click.echo(
        f"serving {searcher.size} images on http://{_url_host(host)}:{port}/{query}", err=True
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
