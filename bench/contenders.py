"""The end-to-end contenders: `vlpipe run` and the scripts a user would write instead.

Every contender captions and embeds the same images with the same vlpipe-mini model and writes
one Parquet file (or vlpipe's parts) with uri, size, caption and float16 embedding. Each runs in a
fresh process (`python -m bench.contenders NAME ...`) and prints one JSON line: images, seconds of
the timed section (after the model is loaded and warmed up, to the last byte written) and its split.

- vlpipe: `vlpipe.run(manifest, out, ...)` (no index), the in-process DirectRunner (FnApiRunner).
- naive: open, convert, preprocess and run the model one image at a time.
- dataloader: a torch DataLoader (num_workers, batch 32) over plain PIL decoding: the best loop
  a user could hand-write.
- dataloader-vlpipe-decode: the same loop decoding with vlpipe's decoder, which isolates what
  Beam and the pipeline add on top of decoding and inference.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

CONTENDERS = ("vlpipe", "naive", "dataloader", "dataloader-vlpipe-decode")


def read_manifest(path: str) -> list[str]:
    with open(path, newline="") as f:
        return [row["uri"] for row in csv.DictReader(f)]


def load_model(name: str):
    """The fused captioner+embedder, tower loaded and kernels warmed up by one tiny batch."""
    from vlpipe.models.registry import load_captioner

    model = load_captioner(name, device="cpu")
    warm_up(model)
    return model


def warm_up(model) -> None:
    size = model.image_size
    model.caption_and_embed(torch.zeros(1, 3, size, size, dtype=torch.uint8))


def write_parquet(path: Path, rows: list[dict], dim: int) -> None:
    """What a hand-written script would do: one table, embeddings as float16 fixed-size lists."""
    emb = np.stack([r.pop("embedding") for r in rows]).astype(np.float16)
    table = pa.Table.from_pylist(rows)
    flat = pa.array(emb.ravel(), pa.float16())
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, dim))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def plain_open(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def vlpipe_open(path: str, min_side: int):
    from vlpipe.images.decode import decode_image

    with open(path, "rb") as f:
        return decode_image(f.read(), min_side=min_side)


# -- the contenders ---------------------------------------------------------------------------


def run_vlpipe(uris: list[str], manifest: str, model_name: str, out: Path, args) -> dict:
    import vlpipe
    from vlpipe.api import run_config
    from vlpipe.models.backends import resolve_backend
    from vlpipe.worker.handlers import VlpipeModelHandler

    # resolved here as the run's driver resolves it: the handler caches loaded models by backend,
    # so the model loaded before the clock must be the one the run uses (vlpipe-mini on CPU)
    backend = resolve_backend(getattr(args, "backend", "auto"), "cpu")  # loops below run torch
    options = {
        "captioner": model_name,
        "embedder": model_name,
        "device": "cpu",
        "batch_size": args.batch_size,
        "decode_threads": args.decode_threads,
        "workers": getattr(args, "run_workers", 1),
        "max_caption_tokens": args.max_tokens,
        "backend": backend,
        "overwrite": True,
        "build_index": False,
    }
    if getattr(args, "shard_size", None):
        options["shard_size"] = args.shard_size
    config = run_config(manifest, str(out), **options)
    models = VlpipeModelHandler.for_run(config).load_model()  # once per process, reused by run
    warm_up(models.captioner)
    start = time.perf_counter()
    summary = vlpipe.run(manifest, str(out), **options).last
    seconds = time.perf_counter() - start
    if not summary.ok or summary.written != len(uris):
        raise RuntimeError(f"vlpipe run wrote {summary.written} of {len(uris)}: {summary.lines()}")
    t = summary.timings
    split = {
        "decode_thread_s": t.get("decode_s", 0.0),  # summed over decode threads, overlapped
        "infer_s": t.get("infer_s", 0.0),
        "write_s": t.get("write_s", 0.0),
    }
    if options["workers"] == 1:  # with more workers the shard times are sums over processes
        split["other_s"] = seconds - split["infer_s"] - split["write_s"]
    return {"seconds": seconds, "split": split, "backend": backend}


def run_naive(uris: list[str], _manifest: str, model_name: str, out: Path, args) -> dict:
    model = load_model(model_name)
    split = {"decode_s": 0.0, "infer_s": 0.0, "write_s": 0.0}
    rows = []
    start = time.perf_counter()
    for uri in uris:
        t0 = time.perf_counter()
        image = plain_open(uri)
        pixels = model.preprocess(image)
        t1 = time.perf_counter()
        captions, emb = model.caption_and_embed(pixels[None], args.max_tokens)
        split["decode_s"] += t1 - t0
        split["infer_s"] += time.perf_counter() - t1
        rows.append(_row(uri, image.size, captions[0], emb[0]))
    t0 = time.perf_counter()
    write_parquet(out / "results.parquet", rows, model.dim)
    split["write_s"] = time.perf_counter() - t0
    return {"seconds": time.perf_counter() - start, "split": split}


class ImageFiles(torch.utils.data.Dataset):
    """(pixels, width, height) per file, decoded in the DataLoader's worker processes."""

    def __init__(self, uris: list[str], preprocess, vlpipe_decode: bool, min_side: int):
        self.uris, self.preprocess = uris, preprocess
        self.vlpipe_decode, self.min_side = vlpipe_decode, min_side

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, i: int):
        if self.vlpipe_decode:
            decoded = vlpipe_open(self.uris[i], self.min_side)
            image, size = decoded.image, (decoded.width, decoded.height)
        else:
            image = plain_open(self.uris[i])
            size = image.size
        return self.preprocess(image), size[0], size[1]


def run_dataloader(uris: list[str], _manifest: str, model_name: str, out: Path, args) -> dict:
    model = load_model(model_name)
    dataset = ImageFiles(
        uris, model.preprocess, args.contender.endswith("vlpipe-decode"), model.image_size
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.workers, shuffle=False
    )
    split = {"wait_for_batch_s": 0.0, "infer_s": 0.0, "write_s": 0.0}
    rows = []
    start = time.perf_counter()
    batches = iter(loader)
    index = 0
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        split["wait_for_batch_s"] += time.perf_counter() - t0
        if batch is None:
            break
        pixels, widths, heights = batch
        t1 = time.perf_counter()
        captions, emb = model.caption_and_embed(pixels, args.max_tokens)
        split["infer_s"] += time.perf_counter() - t1
        for j, caption in enumerate(captions):
            size = (int(widths[j]), int(heights[j]))
            rows.append(_row(uris[index + j], size, caption, emb[j]))
        index += len(captions)
    t0 = time.perf_counter()
    write_parquet(out / "results.parquet", rows, model.dim)
    split["write_s"] = time.perf_counter() - t0
    return {"seconds": time.perf_counter() - start, "split": split}


def _row(uri: str, size: tuple[int, int], caption: str, embedding: np.ndarray) -> dict:
    return {
        "uri": uri,
        "width": size[0],
        "height": size[1],
        "caption": caption,
        "embedding": embedding,
    }


RUNNERS = {
    "vlpipe": run_vlpipe,
    "naive": run_naive,
    "dataloader": run_dataloader,
    "dataloader-vlpipe-decode": run_dataloader,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.contenders")
    parser.add_argument("contender", choices=CONTENDERS)
    parser.add_argument("--manifest", required=True, help="CSV with a uri column")
    parser.add_argument("--model", default="mini")
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--decode-threads", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=30)
    parser.add_argument("--shard-size", type=int, help="vlpipe only (default: vlpipe's own)")
    parser.add_argument("--run-workers", type=int, default=1, help="vlpipe run --workers")
    parser.add_argument("--backend", default="auto", help="vlpipe run --backend (vlpipe only)")
    parser.add_argument("--torch-threads", type=int, default=1, help="0: torch's default")
    parser.add_argument(
        "--full-prefix-decoder", action="store_true",
        help="decode captions the old way, without the KV cache (the profile's 'before')",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.full_prefix_decoder:
        from bench.kv_cache import install_full_prefix

        install_full_prefix()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    uris = read_manifest(args.manifest)
    result = RUNNERS[args.contender](uris, args.manifest, args.model, Path(args.out), args)
    result.update(
        contender=args.contender,
        images=len(uris),
        torch_threads=torch.get_num_threads(),
        full_prefix_decoder=args.full_prefix_decoder,
        run_workers=args.run_workers,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
