"""vlpipe-mini, the built-in offline fusion model (see DESIGN.md). Being built; see issue 4."""

from __future__ import annotations

import os

CONFIG_NAME = "vlpipe_mini.json"
SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "weights")


def is_mini_dir(path: str) -> bool:
    """A directory written by `vlpipe train` (or the shipped weights)."""
    return os.path.isfile(os.path.join(path, CONFIG_NAME))


def load_mini(path: str | None = None, device: str = "auto", precision: str = "auto"):
    """The shipped model (path None) or a trained directory."""
    from vlpipe.models.mini.model import MiniModel

    return MiniModel.load(path or SHIPPED_DIR, device=device, precision=precision)
