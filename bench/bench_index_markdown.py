"""The BENCHMARKS.md block of `python -m bench.bench_index` (bench/report.py renders it from the
saved result), apart from the measuring code."""

from __future__ import annotations

import re


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        "| vectors | contender | index | build s | peak RSS MB | query median ms | p95 ms"
        " | recall@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in d["sizes"]:
        lat = row["latency"]
        for name, label in (
            ("auto", "vlpipe auto"),
            ("flat", "vlpipe exact"),
            ("plain", "plain script, exact"),
        ):
            b = row[f"build_{name}"]
            index = f"{b['kind']} `{b['factory']}`" if "kind" in b else "`IndexFlatIP`"
            if name == "auto" and b.get("search_params"):
                knob = {k: v for k, v in b["search_params"].items() if k != "param_string"}
                index += " " + ", ".join(f"{k}={v}" for k, v in knob.items())
            q = lat.get(name, {})
            recall = f"{lat['recall_at_10']:.3f}" if name == "auto" else ("1 (exact)" if q else "-")
            lines.append(
                f"| {row['vectors']:,} | {label} | {index} | {b['wall_s']:.1f}"
                f" | {b['peak_rss_mb']:.0f} | {_ms(q.get('median_ms'))} | {_ms(q.get('p95_ms'))}"
                f" | {recall} |"
            )
    cold = d["cold"]
    ph = cold["phases"]
    lines += [
        "",
        f"Cold search ({cold['vectors']:,} vectors, {cold['dim']}-d, embedder {cold['embedder']},"
        f' query "{cold["query"]}"): median {cold["median_s"]["auto"]:.2f} s with the auto index,'
        f" {cold['median_s']['flat']:.2f} s with the exact one. Where the time goes, in a fresh"
        f" process: imports of faiss + vlpipe.index {ph['import_index_modules_s']:.2f} s,"
        f" index + id map open"
        f" {ph['open_index_s']:.2f} s, embedder load {ph['load_embedder_s']:.2f} s, first query"
        f" {ph['first_query_s']:.2f} s (interpreter start and click come on top).",
    ]
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    for g in d["goals"]:
        lines.append(f"| {g['goal']} | {g['value']:.3f} | {'yes' if g['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def write_markdown(result: dict) -> None:
    """Fill this benchmark's block under "## Index and search" in BENCHMARKS.md."""
    from bench import report

    body = report.block(result)
    if "index" not in report.RENDERERS:  # the shared renderer table does not know this block yet
        body = body.rstrip() + "\n\n" + markdown(result)
    text = report.DOC.read_text()
    start, end = "<!-- bench:index -->", "<!-- /bench:index -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    new = f"{start}\n{body}{end}"
    text = pattern.sub(lambda _: new, text, count=1) if pattern.search(text) else text + "\n" + new
    report.DOC.write_text(text)
    print(f"updated {report.DOC.name}: index")
