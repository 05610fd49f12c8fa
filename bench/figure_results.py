"""The numbers of the committed results files, for `python -m bench.figures`: by benchmark, each
with its quantity (images/s, seconds, MB, ratio) where the file says it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from bench.common import REPO, RESULTS
from bench.figure_prose import FIGURE, NUM, UNITS
from bench.report import anchor

MODEL_RECORD = REPO / "vlpipe" / "models" / "mini" / "weights" / "vlpipe_mini.json"
RECORD = "vlpipe_mini"  # what prose cites the shipped model's record by (vlpipe_mini.json)


def quantity_of_key(key: str) -> tuple[str, float] | None:
    """What a results file's key measures, from its name (`images_s`, `infer_s`, `peak_rss_mb`,
    `p95_ms`, `ratio`): (quantity, factor to its base unit), or None where the name does not say."""
    key = key.removesuffix("[]").lower()
    if re.fullmatch(r"(t2i_|i2t_)?r\d+|bleu4|cider", key) or re.search(
        r"precision|recall|agreement", key
    ):
        return "quality", 1.0
    if key.endswith("images_s") or key.endswith("_per_s") or key == "rate":
        return "rate", 1.0
    if key.endswith("_ms") or key.startswith("ms_") or "_ms_" in key:
        return "time", 1e-3
    if key.startswith("us_") or key.endswith("_us"):
        return "time", 1e-6
    if key.endswith("_s") or key.endswith("seconds") or key.endswith("_duration"):
        return "time", 1.0
    if key.endswith("_mb") or "_mb_" in key:
        return "memory", 1.0
    if key.endswith("_gb"):
        return "memory", 1e3
    if key.endswith("bytes"):
        return "memory", 1e-6
    if key.endswith("ratio"):
        return "ratio", 1.0
    return None


def numbers_in(data: object, quantity: tuple[str, float] | None = None) -> Iterator[Known]:
    """Every number of a results record, with its quantity where the record says it: a figure's
    unit, a key's name, or the unit written after a number inside a string."""
    if isinstance(data, bool):
        return
    if isinstance(data, int | float):
        yield (quantity[0], data * quantity[1]) if quantity else ("", float(data))
    elif isinstance(data, str):
        for m in FIGURE.finditer(data):
            kind, factors = UNITS[m.group("ratio") or m.group("unit")]
            for value in filter(None, (m.group("a"), m.group("b"))):
                yield kind, float(value.replace(",", "")) * factors[0]
        for m in re.finditer(NUM, data):
            yield "", float(m.group(0).replace(",", ""))
    elif isinstance(data, dict):
        yield from _numbers_of_dict(data, quantity)
    elif isinstance(data, list):
        for value in data:
            yield from numbers_in(value, quantity)


def _numbers_of_dict(data: dict, quantity: tuple[str, float] | None) -> Iterator[Known]:
    if "metric" in data and "vlpipe" in data and "baseline" in data:  # a figure of bench.common
        unit = UNITS.get(str(data.get("unit") or "").split(" ")[0])
        measured = (unit[0], unit[1][0]) if unit else None
        yield from numbers_in([data["vlpipe"], data["baseline"]], measured)
        yield from numbers_in(data.get("ratio"), ("ratio", 1.0))
        yield from numbers_in(re.findall(NUM, str(data.get("goal") or "")), None)
        for value in re.findall(NUM, str(data.get("goal") or "")):
            yield "ratio", float(value)
        yield from numbers_in(data.get("note") or "")
        return
    for key, value in data.items():
        yield from numbers_in(value, quantity_of_key(str(key)) or quantity)


Known = tuple[str, float]  # (quantity, or "" where unknown; value in the quantity's base unit)


Pools = dict[str, list[float]]  # quantity -> sorted values


def results_group(path: Path) -> str:
    """The benchmark a results file belongs to: `faces-accuracy.json` -> faces."""
    return path.stem.split("-")[0]


def known_numbers(results: Path = RESULTS, record: Path = MODEL_RECORD) -> dict[str, Pools]:
    """The numbers of the committed results files by benchmark (bench/results/e2e.json -> "e2e"),
    each sorted by quantity ("" holds the numbers whose quantity the files do not say); the
    shipped model's record and the size of its weight files count as part of every benchmark."""
    extra = list(numbers_in(json.loads(record.read_text("utf-8")))) if record.exists() else []
    for weights in sorted(record.parent.glob("*.safetensors")):  # the shipped files' sizes
        extra += [
            ("memory", weights.stat().st_size / 1e6),
            ("memory", weights.stat().st_size / 2**20),
        ]
    known: dict[str, dict[str, set[float]]] = {}
    for path in sorted(results.glob("*.json")):
        pools = known.setdefault(results_group(path), {})
        for kind, value in [*numbers_in(json.loads(path.read_text("utf-8"))), *extra]:
            pools.setdefault(kind, set()).add(value)
    known[RECORD] = {}
    for kind, value in extra:  # cited alone: "vlpipe_mini.json", the shipped model's figures only
        known[RECORD].setdefault(kind, set()).add(value)
    return {name: {k: sorted(v) for k, v in pools.items()} for name, pools in known.items()}


def result_names(results: Path = RESULTS) -> dict[str, str]:
    """What prose may call a benchmark's results: its name, and the anchor of its BENCHMARKS.md
    section (from the title in its results file)."""
    names = {}
    for path in sorted(results.glob("*.json")):
        group = results_group(path)
        names[group] = names[path.stem] = group
        title = json.loads(path.read_text("utf-8")).get("title", "")
        names[anchor(title)] = group
    names.pop("", None)
    names[RECORD] = RECORD
    return names


def merged(known: dict[str, Pools], names: tuple[str, ...]) -> Pools:
    merged: dict[str, set[float]] = {}
    for name in names or tuple(known):
        for kind, values in known.get(name, {}).items():
            merged.setdefault(kind, set()).update(values)
    return {kind: sorted(values) for kind, values in merged.items()}
