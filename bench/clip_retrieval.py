"""clip-retrieval, the contender of bench/modes.py: its own venv (it cannot share vlpipe's
pins), a view of the benchmark's CLIP model that its transformers 4.x loads, its `files` input
folder, and the check of what it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import REPO

CLIP_RETRIEVAL_VENV = REPO / "bench" / ".venv-clip-retrieval"
#: what the clip-retrieval venv is made with (pip resolves the rest)
CLIP_RETRIEVAL_PINS = ("torch==2.14.1", "torchvision==0.29.1", "clip-retrieval==2.45.0",
                       "setuptools<81")  # fmt: skip

# Run with the clip-retrieval venv's Python: OpenAI's BPE tokenizer, saved by its transformers.
_CLIP_RETRIEVAL_TOKENIZER = """
import gzip, json, os, sys, tempfile
import clip
from clip.simple_tokenizer import bytes_to_unicode
from transformers import CLIPTokenizerFast
out = sys.argv[1]
bpe = os.path.join(os.path.dirname(clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
merges = gzip.open(bpe).read().decode("utf-8").split("\\n")[1 : 49152 - 256 - 2 + 1]
chars = list(bytes_to_unicode().values())
vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
vocab += ["<|startoftext|>", "<|endoftext|>"]
with tempfile.TemporaryDirectory() as tmp:
    with open(f"{tmp}/vocab.json", "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(f"{tmp}/merges.txt", "w") as f:
        f.write("#version: 0.2\\n" + "\\n".join(merges) + "\\n")
    tok = CLIPTokenizerFast(vocab_file=f"{tmp}/vocab.json", merges_file=f"{tmp}/merges.txt",
                            model_max_length=77, pad_token="<|endoftext|>")
    tok.save_pretrained(out)
"""


def clip_retrieval_python() -> Path:
    """The clip-retrieval venv's Python, making the venv first if it is missing."""
    python = CLIP_RETRIEVAL_VENV / "bin" / "python"
    if not (CLIP_RETRIEVAL_VENV / "bin" / "clip-retrieval").exists():
        print(f"installing clip-retrieval into {CLIP_RETRIEVAL_VENV}", file=sys.stderr)
        base = shutil.which("python3") or sys.executable
        subprocess.run([base, "-m", "venv", str(CLIP_RETRIEVAL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *CLIP_RETRIEVAL_PINS],
                       check=True)  # fmt: skip
    return python


def clip_retrieval_view(model: Path, python: Path, root: Path, env: dict[str, str]) -> Path:
    """`model` as clip-retrieval's transformers 4.x loads it: the same config, weights and image
    preprocessor (linked), and a CLIP BPE tokenizer saved in the 4.x format."""
    view = root / "clip-b32-clip-retrieval"
    view.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        link = view / name
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(os.path.relpath(model / name, view))
    if not (view / "tokenizer.json").exists():
        subprocess.run([str(python), "-c", _CLIP_RETRIEVAL_TOKENIZER, str(view)], check=True,
                       env={**os.environ, **env}, capture_output=True)  # fmt: skip
    return view


def image_folder(paths: list[Path], root: Path) -> Path:
    """clip-retrieval's `files` input: a folder holding exactly these images (links to them)."""
    folder = root / f"files-{len(paths)}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for p in paths:
        (folder / p.name).symlink_to(p.resolve())
    return folder


def clip_retrieval_check(out: Path, images: int) -> dict:
    """Every image embedded; clip-retrieval's own batch-loop times (stats/0.json, summed)."""
    import numpy as np

    count = sum(np.load(p, mmap_mode="r").shape[0] for p in (out / "img_emb").glob("*.npy"))
    if count != images:
        raise RuntimeError(f"clip-retrieval embedded {count} of {images} images")
    stats = json.loads((out / "stats" / "0.json").read_text())
    return {k: round(stats[k], 2) for k in ("read_duration", "inference_duration",
                                            "total_duration") if k in stats}  # fmt: skip
