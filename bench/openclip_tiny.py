"""A tiny randomly initialised open_clip model, built offline, in the forms users name it by.

open_clip builds models from named architecture configs; the tests register a tiny one (32 wide,
2 layers, 64 px, OpenAI's BPE tokenizer with a 16-token context) with `open_clip.add_model_config`
in the test process, save its weights as a .pt state dict and as .safetensors, and also write it
as an open_clip model folder (open_clip_config.json + open_clip_model.safetensors, the layout of
an `hf-hub:` model) with its own preprocessing (mean/std 0.5, squash resize), and as a fake
Hugging Face cache entry of that folder, so `open_clip:hf-hub:ORG/NAME` resolves offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ARCH = "VlpipeTiny-16"
HUB_ID = "vlpipe-tests/tiny-open-clip"
CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "patch_size": 16, "head_width": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}
FOLDER_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize_mode": "squash"}
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def register_arch(root: Path) -> str:
    """Make ARCH known to open_clip in this process (idempotent)."""
    import open_clip

    if ARCH not in open_clip.list_models():
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{ARCH}.json").write_text(json.dumps(CONFIG))
        open_clip.add_model_config(root / f"{ARCH}.json")
    return ARCH


def build_tiny_open_clip(root: str | Path, seed: int = 0) -> dict[str, str]:
    """Paths of one tiny model's weights: {"pt", "safetensors", "folder", "hf_cache"}."""
    import open_clip
    from safetensors.torch import save_file

    root = Path(root)
    register_arch(root / "configs")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(ARCH).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, root / "tiny.pt")
    save_file(state, str(root / "tiny.safetensors"))
    folder = root / "folder"
    folder.mkdir(exist_ok=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": CONFIG, "preprocess_cfg": FOLDER_PREPROCESS})
    )
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return {
        "pt": str(root / "tiny.pt"),
        "safetensors": str(root / "tiny.safetensors"),
        "folder": str(folder),
        "hf_cache": str(_fake_hub_cache(root / "hf_cache", folder)),
    }


def _fake_hub_cache(cache: Path, folder: Path) -> Path:
    """huggingface_hub's cache layout (refs/main -> snapshots/COMMIT/files) holding the folder:
    with HF_HUB_OFFLINE, hf_hub_download finds the files there and never touches the network."""
    repo = cache / f"models--{HUB_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    return cache
