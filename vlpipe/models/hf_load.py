"""Loading transformers checkpoints for vlpipe.models.hf: a model name (local directory or hub
id) to its config and weights, with every failure turned into one `ModelLoadError` line.

Split out of hf.py so the captioner and embedder classes there read without the error plumbing;
both loaders use these helpers.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from vlpipe.errors import ModelLoadError

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No progress bars or 'unexpected weights' reports while loading one tower of a checkpoint."""
    from transformers.utils import logging

    level, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bar:
            logging.enable_progress_bar()


def load_error(name: str, exc: BaseException) -> ModelLoadError:
    """The one line a user needs, from whatever transformers / huggingface_hub raised."""
    from huggingface_hub import errors

    causes, cause = [], exc
    while cause is not None and len(causes) < 10:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    kinds = tuple(type(c) for c in causes)
    local = "download it elsewhere and pass its local directory"
    if any(issubclass(k, errors.LocalEntryNotFoundError) for k in kinds):
        why = f"not a local directory and the Hugging Face hub is unreachable (offline); {local}"
    elif any(issubclass(k, errors.GatedRepoError) for k in kinds):
        why = "a gated hub model: accept its terms on huggingface.co and log in (`hf auth login`)"
    elif any(issubclass(k, errors.RepositoryNotFoundError) for k in kinds):
        why = "no such local directory or Hugging Face hub model"
    elif any(issubclass(k, errors.HFValidationError) for k in kinds):
        why = "neither a local directory nor a valid Hugging Face hub id (org/name)"
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        why = first[:300]
    return ModelLoadError(f"cannot load model {name!r}: {why}")


def resolve(name: str) -> str:
    """A local directory (checked here, for a precise message) or a hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"cannot load model {name!r}: the directory holds no config.json, so it is not a "
                "transformers checkpoint (save one with save_pretrained)"
            )
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise ModelLoadError(
            f"cannot load model {name!r}: no such directory, and not a Hugging Face hub id "
            "(org/name); pass a model directory, a hub id or 'mini'"
        )
    return name


def load_config(name: str):
    from transformers import AutoConfig

    location = resolve(name)
    try:
        with quiet():
            return location, AutoConfig.from_pretrained(location)
    except (OSError, ValueError, KeyError) as exc:
        raise load_error(name, exc) from exc


def from_pretrained(name: str, loader, *args, **kwargs):
    """Call a transformers loader, turning its failures into one ModelLoadError line."""
    try:
        with quiet():
            return loader(*args, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise load_error(name, exc) from exc


def unsupported(name: str, model_type: str, kind: str, known: dict) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load model {name!r}: its model_type {model_type!r} is not a supported {kind} "
        f"(vlpipe supports {', '.join(sorted(known))}); pick another model or 'mini'"
    )


def place(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
