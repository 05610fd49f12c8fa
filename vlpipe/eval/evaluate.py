"""Score a finished run against reference captions: retrieval both ways and caption quality.

Run rows are matched to the reference CSV (`image,caption`, one row per caption, like Flickr8k's
captions.csv) by the file name of their uri. The run's own embedder (named in its manifest) embeds
every reference caption, so the text queries live in the same space as the stored image vectors.
"""

from __future__ import annotations

import csv
import logging
import posixpath
from collections import defaultdict

import fsspec
import numpy as np

from vlpipe.errors import VlpipeError
from vlpipe.eval.metrics import caption_scores, retrieval_recalls
from vlpipe.models.base import l2_normalize
from vlpipe.rundir import RunDir

__all__ = ["KEYS", "embed_texts", "evaluate_run", "file_name", "read_references", "read_run"]

log = logging.getLogger(__name__)

TEXT_BATCH = 256
KEYS = (
    "t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10",
    "bleu4", "cider", "n_images", "n_queries", "n_unmatched",
)  # fmt: skip


def read_references(captions_csv: str) -> dict[str, list[str]]:
    """File name -> its reference captions, from a CSV with `image` and `caption` columns."""
    try:
        with fsspec.open(captions_csv, "r", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            columns = set(reader.fieldnames or [])
            if not {"image", "caption"} <= columns:
                raise VlpipeError(
                    f"{captions_csv}: needs 'image' and 'caption' columns, found {sorted(columns)}"
                )
            refs: dict[str, list[str]] = defaultdict(list)
            for row in reader:
                name, caption = (row["image"] or "").strip(), (row["caption"] or "").strip()
                if name and caption:
                    refs[posixpath.basename(name)].append(caption)
    except FileNotFoundError:
        raise VlpipeError(f"captions file not found: {captions_csv}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise VlpipeError(f"{captions_csv}: not a readable CSV ({exc})") from None
    return dict(refs)


def file_name(uri: str) -> str:
    """The file name a reference CSV knows an image by; for a tar member (`x.tar#dir/k.jpg`),
    the member's."""
    tar, sep, member = uri.rpartition("#")
    return posixpath.basename(member if sep and tar.endswith(".tar") else uri)


def read_run(
    run: RunDir, refs: dict[str, list[str]]
) -> tuple[list[str], list[str], np.ndarray, int]:
    """Names, generated captions and embeddings of the run images that have references, plus the
    count of run images without any (which are left out)."""
    names, captions, vectors, unmatched = [], [], [], 0
    seen: set[str] = set()
    for batch in run.iter_batches(["uri", "caption", "embedding"]):
        emb = batch.column(2)
        matrix = emb.values.to_numpy(zero_copy_only=False).reshape(len(emb), -1)
        for i, (uri, caption) in enumerate(
            zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)
        ):
            name = file_name(uri)
            if name not in refs or name in seen:  # a repeated file name cannot be told apart
                unmatched += 1
                continue
            seen.add(name)
            names.append(name)
            captions.append(caption or "")
            vectors.append(matrix[i])
    image_emb = np.stack(vectors).astype(np.float32) if vectors else np.empty((0, 0), np.float32)
    return names, captions, image_emb, unmatched


def embed_texts(embedder, texts: list[str]) -> np.ndarray:
    return np.concatenate(
        [embedder.embed_texts(texts[i : i + TEXT_BATCH]) for i in range(0, len(texts), TEXT_BATCH)]
    )


def evaluate_run(run_dir: str, captions_csv: str, device: str = "auto") -> dict:
    """Recall@1/5/10 both ways, BLEU-4 and CIDEr-D of a finished run, and the counts behind them."""
    from vlpipe.models.registry import load_embedder

    run = RunDir(run_dir)
    manifest = run.read_manifest()
    if manifest is None:
        raise VlpipeError(f"{run_dir}: not a vlpipe run directory (no manifest.json)")
    try:
        embedder_name = manifest["models"]["embedder"]["name"]
    except (KeyError, TypeError):
        raise VlpipeError(f"{run_dir}/manifest.json: names no embedder") from None

    if not run.is_complete():
        log.warning("%s has no _SUCCESS marker: scoring an unfinished run", run_dir)
    refs = read_references(captions_csv)
    names, generated, image_emb, unmatched = read_run(run, refs)
    if not names:
        raise VlpipeError(
            f"no image of {run_dir} matches a file name in {captions_csv} "
            f"({len(refs)} names in the CSV)"
        )
    if unmatched:
        log.warning("%d run images have no reference caption and are left out", unmatched)

    queries = [caption for name in names for caption in refs[name]]
    query_image = np.array([i for i, name in enumerate(names) for _ in refs[name]])
    embedder = load_embedder(embedder_name, device=device)
    if embedder.dim != image_emb.shape[1]:
        raise VlpipeError(
            f"embedder {embedder_name!r} gives {embedder.dim}-d vectors, the run holds "
            f"{image_emb.shape[1]}-d ones"
        )
    expected = manifest["models"]["embedder"].get("fingerprint")
    if expected and expected != embedder.fingerprint():
        log.warning("embedder %r is not the one that made this run's vectors", embedder_name)
    text_emb = embed_texts(embedder, queries)

    scores = retrieval_recalls(text_emb, l2_normalize(image_emb), query_image, ks=(1, 5, 10))
    scores |= caption_scores(dict(zip(names, generated, strict=True)), refs)
    scores |= {"n_images": len(names), "n_queries": len(queries), "n_unmatched": unmatched}
    return {key: scores[key] for key in KEYS}
