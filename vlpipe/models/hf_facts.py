"""What a run needs to know of a local transformers embedder checkpoint, remembered on disk.

An embedder's family, joint-space width and fingerprint come from its transformers config object
(the fingerprint hashes `config.to_dict()`, defaults filled in), and importing transformers to
build one costs about 0.7 s of CPU at every start. A run whose image tower is a cached OpenVINO
graph needs nothing else of transformers, so once computed the three facts are saved under the
cache folder (beside the graphs), keyed by the bytes of config.json and preprocessor_config.json,
the weight files' digest and the transformers version: any change to one gives a new key, and
the facts are computed again. Hub ids (not local folders) are not remembered.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from importlib.metadata import PackageNotFoundError, version

from vlpipe.errors import ModelLoadError
from vlpipe.models.hf_load import load_config, resolve
from vlpipe.models.hf_weights import weights_digest
from vlpipe.models.openvino_graph import cache_dir

_FILES = ("config.json", "preprocessor_config.json")
FACTS = ("model_type", "dim", "fingerprint")


def config_or_facts(name: str) -> tuple[str, object, dict | None]:
    """(location, transformers config, None), or (location, None, facts) for a local checkpoint
    whose facts an earlier load saved: then transformers is not imported."""
    location = resolve(name)
    facts = read_facts(name, location)
    if facts is not None:
        return location, None, facts
    return (*load_config(name), None)


def joint_width(config) -> int:
    """The joint space's width (CLIP keeps it at the top level, SigLIP as the text width)."""
    return int(getattr(config, "projection_dim", None) or config.text_config.hidden_size)


def model_type(location: str) -> str | None:
    """config.json's model_type, read as JSON (None where there is none to read this way)."""
    try:
        with open(os.path.join(location, "config.json"), encoding="utf-8") as f:
            found = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def read_facts(name: str, location: str) -> dict | None:
    """The facts saved for exactly this checkpoint, or None."""
    path = _path(name, location)
    if path is None or not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            facts = json.load(f)
    except (OSError, ValueError):
        return None  # torn or foreign: computed again and rewritten
    return facts if isinstance(facts, dict) and set(FACTS) <= set(facts) else None


def save_facts(name: str, location: str, facts: dict) -> None:
    """Save under a temporary name, then rename: workers saving at once never read halves."""
    path = _path(name, location)
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({k: facts[k] for k in FACTS}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache folder: the next run computes them again


def _path(name: str, location: str) -> str | None:
    if not os.path.isfile(os.path.join(location, "config.json")):
        return None  # a hub id: its files live in the hub's cache, fetched by transformers
    digest = hashlib.sha1()
    for filename in _FILES:
        try:
            with open(os.path.join(location, filename), "rb") as f:
                digest.update(f.read())
        except OSError:
            digest.update(b"-")
    try:
        digest.update(weights_digest(name, location).encode())
        digest.update(version("transformers").encode())
    except (ModelLoadError, PackageNotFoundError):
        return None  # no weights: loading the model says so
    return os.path.join(cache_dir(), f"hf-facts-{digest.hexdigest()[:16]}.json")
