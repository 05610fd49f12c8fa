"""Where a transformers checkpoint's weight files are, and a cheap digest of their bytes.

The digest goes into an embedder's fingerprint (an index refuses vectors from other weights)
and so into the key of its cached OpenVINO graph; split out of hf.py, which holds the models.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from vlpipe.errors import ModelLoadError
from vlpipe.models.hf_load import load_error

_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype"}


def checkpoint_fingerprint(name: str, location: str, config, pixels: dict) -> str:
    """A checkpoint's identity, the same on any machine, device and precision: the config's
    content, the image preprocessing (`pixels`), and a sample of the weight files' bytes (which
    tells apart different weights saved to the same place)."""
    kept = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    weights = weights_digest(name, location)
    blob = json.dumps({"config": kept, "pixels": pixels, "weights": weights}, sort_keys=True,
                      default=str)  # fmt: skip
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def weights_digest(name: str, location: str) -> str:
    """4 KiB from 16 evenly spaced offsets of each weight file: cheap even for GBs."""
    digest = hashlib.sha1()
    for path in weight_files(name, location):
        size = os.path.getsize(path)
        digest.update(f"{Path(path).name}:{size}".encode())
        with open(path, "rb") as f:
            for i in range(16):
                f.seek(size * i // 16)
                digest.update(f.read(4096))
    return digest.hexdigest()


def weight_files(name: str, location: str) -> list[str]:
    """The checkpoint's weight files on local disk (a hub model's are fetched to its cache);
    a sharded checkpoint's index first, then every shard it names."""
    for filename in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        path = _local_file(name, location, filename)
        if path and filename.endswith(".index.json"):
            shards = sorted(set(json.loads(Path(path).read_text())["weight_map"].values()))
            return [path, *(_local_file(name, location, s, required=True) for s in shards)]
        if path:
            return [path]
    raise ModelLoadError(f"cannot load model {name!r}: it holds no weight files")


def _local_file(name: str, location: str, filename: str, required: bool = False) -> str | None:
    path = os.path.join(location, filename)
    if os.path.isdir(location) and (os.path.isfile(path) or not required):
        return path if os.path.isfile(path) else None  # a local folder: no transformers import
    from transformers.utils import cached_file

    try:
        return cached_file(location, filename, _raise_exceptions_for_missing_entries=required)
    except (OSError, ValueError) as exc:
        raise load_error(name, exc) from exc
