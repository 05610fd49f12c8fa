"""The count check: every input of every spec in exactly one of parts/ or failed/, summed from
the done markers (O(shards) small reads), never from the image ids themselves."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vlpipe.images.quality import FLAGS, flag_rule
from vlpipe.reading.specs import ShardSpec
from vlpipe.rundir import FAILED, PARTS, RunDir

FLAG_ORDER = tuple(FLAGS)
#: seconds each spec's worker spent per stage, as its done marker records them
TIMINGS = ("decode_s", "infer_s", "write_s")


@dataclass
class RunSummary:
    """Counts over every input of the source, not just this run's share of it."""

    seen: int
    written: int
    failed: int
    already_done: int
    processed: int
    duplicates: int
    reasons: dict[str, int]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    lost: int = 0  # inputs of specs with no done marker (or a marker that does not add up)
    missing_parts: int = 0  # parts a marker names that are not there
    duplicated: int = 0
    corrupt_parts: list[str] = field(default_factory=list)
    index: dict | None = None
    flags: dict[str, int] = field(default_factory=dict)  # quality flags (vlpipe.images.quality)
    with_location: int = 0  # rows whose file holds a location (exif_gps)
    with_faces: int | None = None  # rows with a face found; None: faces were not looked for

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.missing_parts == 0
            and self.duplicated == 0
            and self.seen == self.written + self.failed
        )

    def lines(self) -> list[str]:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"seen {self.seen}: written {self.written}, failed {self.failed}"
            f" ({'OK' if self.ok else 'COUNT MISMATCH'}: seen == written + failed"
            f"{'' if self.ok else ' is FALSE'})",
            f"this run: processed {self.processed} in {self.seconds:.1f} s ({rate:.1f} images/s),"
            f" {self.already_done} already done, {self.duplicates} duplicate inputs dropped",
        ]
        if self.timings:
            out.append(
                "time in shards: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
            )
        out += [f"  failed {reason}: {n}" for reason, n in sorted(self.reasons.items())]
        if self.flags:
            out.append(quality_line(self.flags, self.written))
        out.append(self.privacy_line())
        if self.lost or self.missing_parts:
            out.append(f"LOST {self.lost} inputs; {self.missing_parts} parts named but missing")
        out += [
            f"corrupt part set aside, its inputs processed again: {p}" for p in self.corrupt_parts
        ]
        return out

    def privacy_line(self) -> str:
        line = f'privacy: {self.with_location} images hold a location (--where "exif_gps = true")'
        if self.with_faces is not None:
            line += f', {self.with_faces} show faces (--where "faces > 0")'
        return line

    def counts(self) -> dict:
        return {
            "seen": self.seen,
            "written": self.written,
            "failed": self.failed,
            "failed_by_reason": self.reasons,
            "duplicates_dropped": self.duplicates,
            "processed_this_run": self.processed,
            "lost": self.lost,
            "quality_flags": self.flags,
            "with_location": self.with_location,
            "with_faces": self.with_faces,
        }


def quality_line(flags: dict[str, int], written: int) -> str:
    """How many written rows look blurry, dark, ... by the documented defaults."""
    shown = ", ".join(f"{n} {name} ({flag_rule(name)})" for name, n in flags.items())
    return f"quality of {written} written: {shown} (vlpipe curate --where to filter)"


def count(run: RunDir, specs: list[ShardSpec], worked: set[str], seconds: float) -> RunSummary:
    """Sum the markers of the plan's specs; a spec without a done marker of its digest is lost,
    and so is one whose marker disagrees with the count the plan knew."""
    markers = run.markers()
    sizes = {PARTS: run.sizes(PARTS), FAILED: run.sizes(FAILED)}
    total = Counter()
    reasons: Counter = Counter()
    flags: Counter = Counter()
    clock: Counter = Counter()
    for spec in specs:
        marker = markers.get(spec.key)
        if not (marker and marker["done"] and marker["digest"] == spec.digest):
            total["lost"] += spec.count or 1
            continue
        if spec.count is not None and marker["seen"] != spec.count:
            total["lost"] += abs(spec.count - marker["seen"])
        for key in ("seen", "written", "failed", "duplicates"):
            total[key] += marker[key]
        for key in ("with_location", "with_faces"):  # markers of older runs have neither
            total[key] += marker.get(key, 0)
        if spec.key in worked:
            total["processed"] += marker["processed"]
            clock.update({k: marker.get(k, 0.0) for k in TIMINGS})
        reasons.update(marker["reasons"])
        flags.update(marker.get("flags") or {})
        total["missing_parts"] += sum(n not in sizes[PARTS] for n in marker["parts"])
        total["missing_parts"] += sum(n not in sizes[FAILED] for n in marker["failed_parts"])
    return RunSummary(
        seen=total["seen"],
        written=total["written"],
        failed=total["failed"],
        already_done=total["seen"] - total["processed"],
        processed=total["processed"],
        duplicates=total["duplicates"],
        reasons=dict(reasons),
        seconds=seconds,
        timings={k: round(clock[k], 3) for k in TIMINGS} if worked else {},
        lost=total["lost"],
        missing_parts=total["missing_parts"],
        corrupt_parts=list(run.corrupt),
        flags={name: flags[name] for name in FLAG_ORDER if name in flags},
        with_location=total["with_location"],
        with_faces=total["with_faces"],
    )
