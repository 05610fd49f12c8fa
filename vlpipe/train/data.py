"""Training corpora for `vlpipe train`: a Flickr8k-style directory or a manifest of image/caption
pairs, read into one list of images with their captions and split."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vlpipe.errors import VlpipeError

MANIFEST_NAMES = ("manifest.parquet", "manifest.csv", "manifest.jsonl")
URI_COLUMNS = ("uri", "url", "path", "image")
CAPTION_COLUMNS = ("caption", "text", "alt")


@dataclass
class Corpus:
    paths: list[str]  # one per image, readable local paths
    captions: list[list[str]]  # the captions of each image
    splits: list[str]  # "train" or "dev" per image

    def indices(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.splits) if s == split]


def load_corpus(data: str, dev_fraction: float = 0.1) -> Corpus:
    """DIR with images/, captions.csv, splits.csv; or a manifest file (or DIR holding one) with
    uri and caption columns and an optional split column (else a fixed slice becomes dev)."""
    if not os.path.exists(data):
        raise VlpipeError(f"--data {data}: no such file or directory")
    if os.path.isdir(data) and os.path.isfile(os.path.join(data, "captions.csv")):
        return _load_flickr(data)
    manifest = data if os.path.isfile(data) else _find_manifest(data)
    return _load_manifest(manifest, dev_fraction)


def _find_manifest(data: str) -> str:
    for name in MANIFEST_NAMES:
        if os.path.isfile(os.path.join(data, name)):
            return os.path.join(data, name)
    raise VlpipeError(
        f"--data {data}: expected images/ + captions.csv + splits.csv, or a manifest "
        f"({', '.join(MANIFEST_NAMES)}) with uri and caption columns"
    )


def _read_table(path: str) -> dict[str, list]:
    """Columns of a CSV, JSONL or Parquet file as Python lists."""
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    try:
        if path.endswith(".parquet"):
            table = pyarrow.parquet.read_table(path)
        elif path.endswith(".jsonl"):
            table = pyarrow.json.read_json(path)
        else:
            table = pyarrow.csv.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise VlpipeError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    return table.to_pydict()


def _pick(table: dict, names: tuple[str, ...], path: str, what: str) -> str:
    for name in names:
        if name in table:
            return name
    raise VlpipeError(f"{path}: no {what} column (one of {', '.join(names)})")


def _group(keys: list, values: list) -> dict[str, list[str]]:
    """Values per key, keys in first-seen order, rows with a missing key or value dropped."""
    groups: dict[str, list[str]] = {}
    for key, value in zip(keys, values, strict=True):
        if key is not None and value is not None:
            groups.setdefault(str(key), []).append(str(value))
    return groups


def _load_flickr(data: str) -> Corpus:
    caps_path = os.path.join(data, "captions.csv")
    caps = _read_table(caps_path)
    if not {"image", "caption"} <= set(caps):
        raise VlpipeError(f"{caps_path}: needs image,caption columns")
    splits_path = os.path.join(data, "splits.csv")
    if not os.path.isfile(splits_path):
        raise VlpipeError(f"--data {data}: splits.csv is missing")
    splits = _read_table(splits_path)
    if not {"image", "split"} <= set(splits):
        raise VlpipeError(f"{splits_path}: needs image,split columns")
    by_image = _group(caps["image"], caps["caption"])
    rows = [(n, s) for n, s in zip(splits["image"], splits["split"], strict=True) if n in by_image]
    return _checked(
        Corpus(
            paths=[os.path.join(data, "images", n) for n, _ in rows],
            captions=[by_image[n] for n, _ in rows],
            splits=[str(s) for _, s in rows],
        ),
        data,
    )


def _load_manifest(path: str, dev_fraction: float) -> Corpus:
    table = _read_table(path)
    uri = _pick(table, URI_COLUMNS, path, "image uri")
    by_uri = _group(table[uri], table[_pick(table, CAPTION_COLUMNS, path, "caption")])
    base = os.path.dirname(os.path.abspath(path))
    paths = [u if os.path.isabs(u) else os.path.join(base, u) for u in by_uri]
    if "split" in table:
        split_of = dict(zip(map(str, table[uri]), map(str, table["split"]), strict=True))
        splits = [split_of[u] for u in by_uri]
    else:
        n_dev = max(1, round(len(paths) * dev_fraction))
        splits = ["train"] * (len(paths) - n_dev) + ["dev"] * n_dev
    return _checked(Corpus(paths, list(by_uri.values()), splits), path)


def _checked(corpus: Corpus, where: str) -> Corpus:
    missing = [p for p in corpus.paths if not os.path.isfile(p)]
    if missing:
        raise VlpipeError(f"{where}: {len(missing)} images not found, e.g. {missing[0]}")
    if len(corpus.indices("train")) < 2:
        raise VlpipeError(f"{where}: fewer than 2 training images")
    return corpus
