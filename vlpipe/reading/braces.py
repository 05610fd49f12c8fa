"""Shell-style brace ranges, as WebDataset users name shards: `shards/{00000..09999}.tar`."""

from __future__ import annotations

import re

from vlpipe.errors import VlpipeError

MAX_BRACE_NAMES = 1_000_000

_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: 'a/{00..02}.tar' -> a/00.tar, a/01.tar, a/02.tar (padding
    kept when a bound has a leading zero); '{x,y}' lists alternatives. Raises VlpipeError."""
    start = pattern.find("{")
    if start < 0 or "}" in pattern[:start]:
        if "{" in pattern or "}" in pattern:
            raise VlpipeError(f"malformed brace range in {pattern}: unbalanced braces")
        return [pattern]
    end = _closing_brace(pattern, start)
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    out: list[str] = []
    for item in _brace_items(body, pattern):
        out.extend(expand_braces(head + item + tail))  # nested groups and later groups
        if len(out) > MAX_BRACE_NAMES:
            raise VlpipeError(f"brace range in {pattern} expands to too many names")
    return out


def _closing_brace(pattern: str, start: int) -> int:
    depth = 0
    for i in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[i], 0)
        if depth == 0:
            return i
    raise VlpipeError(f"malformed brace range in {pattern}: unbalanced braces")


def _brace_items(body: str, pattern: str) -> list[str]:
    items, depth, begin = [], 0, 0
    for i, ch in enumerate(body):  # split at top-level commas only: '{a,{b,c}}' -> a, {b,c}
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(body[begin:i])
            begin = i + 1
    if items:
        return [*items, body[begin:]]
    if m := _RANGE.fullmatch(body):
        lo, hi = m.groups()
        first, last = int(lo), int(hi)
        if abs(last - first) >= MAX_BRACE_NAMES:
            raise VlpipeError(f"brace range {{{body}}} in {pattern} expands to too many names")
        padded = any(len(b.lstrip("-")) > 1 and b.lstrip("-").startswith("0") for b in (lo, hi))
        width = max(len(lo), len(hi)) if padded else 0
        step = 1 if last >= first else -1
        return [str(i).zfill(width) for i in range(first, last + step, step)]
    raise VlpipeError(
        f"malformed brace range {{{body}}} in {pattern}: use {{first..last}} or {{a,b,...}}"
    )


def has_braces(source: str) -> bool:
    return "{" in source or "}" in source
