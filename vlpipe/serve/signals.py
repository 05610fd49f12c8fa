"""The quality signals and --score columns a served run has: every hit shows them, and the
filter box takes them like any other column (`sharpness > 100 AND aesthetic > 5`)."""

from __future__ import annotations

from vlpipe.images.quality import COLUMNS as SIGNALS
from vlpipe.search.ask import run_manifest


def signal_columns(searcher) -> tuple[str, ...]:
    """The signals, then the scores, that the run's parts hold (none for an older run, or a
    searcher over vectors alone)."""
    rows = getattr(searcher, "rows", None)
    if rows is None or getattr(searcher, "store", None) is None:
        return ()
    try:
        names = set(rows().schema().names)
    except Exception:  # noqa: BLE001 - a run without readable parts shows no signals
        return ()
    scores = list((run_manifest(searcher).get("models") or {}).get("scorers") or {})
    return tuple(c for c in (*SIGNALS, *scores) if c in names)
