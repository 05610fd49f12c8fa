"""The `vlpipe` command. Each subcommand lives in its own module and only parses, validates and
calls library functions; heavy imports (torch, Beam, faiss) happen inside the command bodies so
`vlpipe search` starts fast and never imports Beam."""

from __future__ import annotations

import logging
import os
import sys

import click

from vlpipe.errors import VlpipeError
from vlpipe.version import __version__


class VlpipeGroup(click.Group):
    """Turns VlpipeError (and a few well-known OS errors) into one line on stderr and exit 1;
    as the process's command line, ends it without the interpreter's teardown (quick_exit)."""

    def main(self, args=None, *rest, **kwargs):
        if args is not None or not kwargs.get("standalone_mode", True) or rest:
            return super().main(args, *rest, **kwargs)  # called from code (tests' CliRunner)
        try:
            return super().main(args, **kwargs)
        except SystemExit as exc:  # standalone click always ends so, with the exit code
            from vlpipe.cli.quick_exit import exit_now

            exit_now(exc.code)
            raise

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VlpipeError as exc:
            raise click.ClickException(str(exc)) from None
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            raise click.ClickException(os_error_line(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def os_error_line(exc: OSError) -> str:
    """`No such file or directory: out/x`, or the error's own words where it has no strerror
    (s3fs raises FileNotFoundError("out/x") with neither strerror nor filename)."""
    if exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    text = " ".join(str(exc).split()) or exc.strerror or ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@click.group(cls=VlpipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vlpipe")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail to stderr.")
def main(verbose: bool) -> None:
    """Caption and embed image corpora, build a FAISS index, search it."""
    # Hub models are never fetched implicitly: a name that is not on disk fails fast and clearly.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet_beam_import_noise)


def _quiet_beam_import_noise(record: logging.LogRecord) -> bool:
    """Beam warns on the root logger, at import, that Google Cloud clients are missing; a local
    run does not need them, and the line reads like an error to a user."""
    return not record.getMessage().startswith("apitools not found")


def _register() -> None:
    from importlib import import_module

    for name in ("run", "index", "search", "ask", "dedup", "curate", "eval", "train", "serve"):
        try:
            module = import_module(f"vlpipe.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"vlpipe.cli.{name}":
                raise
            continue  # command not built yet
        main.add_command(module.command)


_register()
