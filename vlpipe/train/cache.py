"""Tower features computed once per corpus and cached on disk, so training epochs only run the
small trainable parts. Files are keyed by a hash of their inputs, so a changed corpus recomputes."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from vlpipe.models.mini.efficientnet import (
    TOWERS,
    EfficientNetLite,
    fuse_batchnorm,
    normalize_pixels,
)


def _key(kind: str, items: list[str], extra: dict) -> str:
    blob = json.dumps([kind, items, extra], sort_keys=True).encode()
    return f"{kind}-{hashlib.sha1(blob).hexdigest()[:16]}.npy"


def _save(path: str, array: np.ndarray) -> None:
    tmp = path + ".tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def load_pixels(path: str, view: str = "plain", side: int = 224) -> torch.Tensor:
    """One image file to uint8 CHW at side x side, the same preprocessing MiniModel uses; the
    "lowres" view first makes it a small photo (`degrade`)."""
    from PIL import Image

    from vlpipe.models.mini.model import preprocess_image

    with Image.open(path) as img:
        img = img.convert("RGB")
        return preprocess_image(degrade(img, path) if view == "lowres" else img, side)


def degrade(img, key: str):
    """The photo as a small web copy would come: 128-200 px on its short side (aspect kept),
    JPEG quality 50-90, scaled back up; the same for the same `key` (the file's path)."""
    import io
    import random

    from PIL import Image

    rng = random.Random(hashlib.sha1(key.encode()).hexdigest())
    w, h = img.size
    scale = rng.uniform(128, 200) / min(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=rng.randint(50, 90))
    with Image.open(buf) as small:
        return small.convert("RGB").resize((w, h), Image.BICUBIC)


def image_features(
    paths: list[str],
    cache_dir: str,
    stage: int,
    batch_size: int = 64,
    progress: bool = True,
    view: str = "plain",
    tower: str = "lite0",
) -> np.ndarray:
    """fp16 output of the frozen stages [0, stage) of `tower` for every image: (N, C, H, H)."""
    side = TOWERS[tower]["image_size"]
    extra = {"stage": stage, "size": side}
    if view != "plain":
        extra["view"] = view
    if tower != "lite0":  # Lite0's keys as they were, so existing caches stay valid
        extra["tower"] = tower
    path = os.path.join(cache_dir, _key("images", paths, extra))
    if os.path.isfile(path):
        return np.load(path)
    from tqdm import tqdm

    # frozen stages only: BatchNorm folded into the convs gives the same features, faster
    model = fuse_batchnorm(EfficientNetLite.pretrained(tower))
    model = model.to(memory_format=torch.channels_last)
    chunks = []
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(paths), batch_size),
            desc=f"image features ({view})",
            unit="batch",
            disable=not progress,
        ):
            batch = paths[start : start + batch_size]
            pixels = torch.stack([load_pixels(p, view, side) for p in batch])
            x = normalize_pixels(pixels).contiguous(memory_format=torch.channels_last)
            chunks.append(model.forward_until(x, stage).half().contiguous().numpy())
    feats = np.concatenate(chunks)
    os.makedirs(cache_dir, exist_ok=True)
    _save(path, feats)
    return feats


def text_features(texts: list[str], cache_dir: str, progress: bool = True) -> np.ndarray:
    """fp16 MiniLM sentence embeddings (N, 384), L2-normalised."""
    path = os.path.join(cache_dir, _key("texts", texts, {"model": "all-MiniLM-L6-v2"}))
    if os.path.isfile(path):
        return np.load(path)
    from vlpipe.models.mini.text import MiniLM

    feats = MiniLM().encode(texts, progress=progress).half().numpy()
    os.makedirs(cache_dir, exist_ok=True)
    _save(path, feats)
    return feats
