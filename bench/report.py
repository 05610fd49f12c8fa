"""Write a benchmark's result into its own block of BENCHMARKS.md, leaving the rest untouched.

Each benchmark owns the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; everything
outside the markers (prose, the index helper's section) is kept as it is. A block that is not in
the file yet is appended at the end.

    python -m bench.report   # re-render every block from bench/results/*.json
"""

from __future__ import annotations

import importlib
import re
import sys

from bench.common import REPO, SCRATCH, fmt, load

DOC = REPO / "BENCHMARKS.md"
#: benchmark name -> module that renders its details (a `markdown(result) -> str` function)
RENDERERS = {
    "decode": "bench.decode",
    "e2e": "bench.e2e",
    "e2e_before_after": "bench.e2e_before_after",
    "scaling": "bench.scaling",
    "index": "bench.bench_index_markdown",  # the index helper's benchmark
    "profile": "bench.profile",
    "kv_cache": "bench.kv_cache",
    "tower": "bench.tower",
    "gpu": "bench.gpu",
    "orchestration": "bench.orchestration",
    "modes": "bench.modes",
    "hybrid": "bench.hybrid",
    "search": "bench.search_markdown",
    "dedup_quality": "bench.dedup_quality",
    "dedup_scale": "bench.dedup_scale",
    "curate_scale": "bench.curate_scale",
    "img2dataset_check": "bench.img2dataset_check",
    "quality_agreement": "bench.quality_agreement",
    "mini_lowres": "bench.mini_lowres",
    "mini_speed": "bench.mini_speed",
    "models_cpu": "bench.models_cpu",
    "candidates": "bench.candidates",
    "storage_requests": "bench.storage_requests",
    "cpu_default": "bench.cpu_default",
    "precision_quality": "bench.precision_quality",
    "faces": "",  # figures only (bench/faces.py has no tables of its own)
}


def block(result: dict) -> str:
    """The generated markdown: figures with ratios and goals, then the benchmark's own tables."""
    module = RENDERERS.get(result["name"])
    details = importlib.import_module(module).markdown(result) if module else ""
    if "hardware" not in result:  # not measured here: the renderer says why and how
        return details.rstrip() + "\n"
    hw = result["hardware"]
    load = result["load_average"]
    lines = [
        f"Command: `{result['command']}` ({result['date']}, {result['seconds']:.0f} s).  ",
        f"Hardware: {hw['cores']} cores, {hw['cpu']}, {hw['memory_gb']} GB RAM, GPU"
        f" {hw['gpu'] or 'none'}; torch {hw['torch']}, torchvision {hw['torchvision']}, Beam"
        f" {hw['apache_beam']}, Pillow {hw['pillow']}.  ",
        f"Load average (1/5/15 min) before {_load(load['before'])}, after {_load(load['after'])}"
        " (the machine is shared with other jobs).",
        "",
    ]
    if result["figures"]:
        lines += [
            "| figure | vlpipe | baseline | ratio | goal |",
            "|---|---|---|---|---|",
        ]
        for f in result["figures"]:
            unit = f" ({f['unit']})" if f["unit"] else ""
            met = {True: " met", False: " **not met**", None: ""}[f["met"]]
            lines.append(
                f"| {f['metric']}{unit} | {fmt(f['vlpipe'])} | {fmt(f['baseline'])}"
                f" ({f['baseline_name']}) | {f['ratio']:.2f}x | {f['goal'] or '-'}{met} |"
            )
        lines.append("")
    lines.append(details)
    return "\n".join(lines).rstrip() + "\n"


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def summary() -> str:
    """Every goal of every saved result, one line each: the table at the top of the file."""
    lines = [
        "| benchmark | figure | vlpipe | baseline | ratio | goal |",
        "|---|---|---|---|---|---|",
    ]
    for name in RENDERERS:
        result = load(name)
        for f in (result or {}).get("figures", []):
            if f["goal"]:
                met = "met" if f["met"] else "**not met**"
                unit = f" ({f['unit']})" if f["unit"] else ""
                lines.append(
                    f"| [{name}](#{anchor(result['title'])}) | {f['metric']}{unit} |"
                    f" {fmt(f['vlpipe'])} | {fmt(f['baseline'])} ({f['baseline_name']}) |"
                    f" {f['ratio']:.2f}x | {f['goal']}: {met} |"
                )
    return "\n".join(lines) + "\n"


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _replace(text: str, name: str, body: str, title: str) -> str:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    new = f"{start}\n{body}{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: new, text, count=1)
    return text.rstrip() + f"\n\n## {title}\n\n{new}\n"


def run_and_publish(name: str, compute, smoke: bool = False) -> int:
    """A benchmark's main: run it, then write its block (a smoke run only renders it); a
    missing corpus is one error line."""
    from bench.corpus import CorpusError

    try:
        result = compute()
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if smoke:
        smoke_block(name, result)
    else:
        update(name, result)
    return 0


def smoke_block(name: str, result: dict) -> str:
    """Render a smoke run's block, so a broken renderer fails the smoke run too, into
    bench/results/tmp/NAME-smoke.md: BENCHMARKS.md and bench/results/NAME.json stay as they are."""
    text = block({**result, "name": name})
    path = SCRATCH / f"{name}-smoke.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"smoke: rendered {path.relative_to(REPO)}; BENCHMARKS.md untouched")
    return text


def update(name: str, result: dict) -> None:
    """Replace (or append) the block of benchmark `name`, and the summary, in BENCHMARKS.md."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    text = _replace(text, name, block(result), result["title"])
    if "<!-- bench:summary -->" in text:
        text = _replace(text, "summary", summary(), "Summary")
    DOC.write_text(text)
    print(f"updated {DOC.name}: {name}")


def main() -> int:
    for name in RENDERERS:
        result = load(name)
        if result:
            update(name, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
