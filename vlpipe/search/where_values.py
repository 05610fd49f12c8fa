"""Literals of a search filter (vlpipe.search.where) as Arrow scalars of their column's type.

Why check types at all: Arrow would cast or fail deep inside an evaluation, or quietly compare a
number with a string column and match nothing. Checking each literal against its column when the
filter is parsed turns a typo into one line naming the column, its type and the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Column:
    """A column of the run that a filter names, and its Arrow type."""

    name: str
    type: pa.DataType

    @property
    def field(self) -> pc.Expression:
        return pc.field(self.name)

    @property
    def kind(self) -> str:
        return _type_kind(self.type)

    def describe(self) -> str:
        return f"{self.name} is {self.type}"


_KINDS = (
    (pa.types.is_string, "string"),
    (pa.types.is_large_string, "string"),
    (pa.types.is_integer, "int"),
    (pa.types.is_floating, "float"),
    (pa.types.is_boolean, "bool"),
    (pa.types.is_timestamp, "timestamp"),
    (pa.types.is_date, "date"),
)


def _type_kind(t: pa.DataType) -> str:
    """What literals a column compares with; "other" (lists, structs, binary): IS NULL only."""
    return next((kind for check, kind in _KINDS if check(t)), "other")


def literal(column: Column, lit: str, text: str) -> pa.Scalar:
    """A literal (`lit`: string, number or bool; `text` as written) as a scalar of a type
    Arrow compares with the column's; ValueError with a one-line reason when there is none."""
    kind = column.kind
    if kind == "other":
        raise ValueError(f"{column.describe()}: it can only be tested with IS [NOT] NULL")
    if lit == "string" and kind in ("string", "timestamp", "date"):
        text = unquote(text)
        if kind == "string":
            return pa.scalar(text, column.type)
        return temporal(text, column)
    if lit == "number" and kind in ("int", "float"):
        if kind == "int" and re.fullmatch(r"-?\d+", text):
            if not -(2**63) <= int(text) < 2**63:
                raise ValueError(f"integer out of range: {printable(text)}")
            return pa.scalar(int(text), pa.int64())
        return pa.scalar(float(text), pa.float64())
    if lit == "bool" and kind == "bool":
        return pa.scalar(text.lower() == "true", pa.bool_())
    hint = " (quote it)" if kind == "string" else ""
    raise ValueError(f"type mismatch: {column.describe()}, {printable(text)} is a {lit}{hint}")


def temporal(text: str, column: Column) -> pa.Scalar:
    """An ISO date or date/time for a date or timestamp column (no offset: UTC)."""
    if column.kind == "date":
        try:
            return pa.scalar(date.fromisoformat(text), column.type)
        except ValueError:
            raise ValueError(f"{column.name} is a date: write it as 'YYYY-MM-DD'") from None
    try:
        moment = datetime.fromisoformat(re.sub(r"[zZ]$", "+00:00", text.strip()))
    except ValueError:
        raise ValueError(
            f"{column.name} is a timestamp: write an ISO date/time such as '2024-01-02' "
            "or '2024-01-02T15:04:05'"
        ) from None
    tz = column.type.tz
    if tz is None and moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    elif tz is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return pa.scalar(moment, pa.timestamp("us", tz=tz))


def unquote(text: str) -> str:
    return text[1:-1].replace("''", "'")


def printable(text: str, limit: int = 40) -> str:
    """User text for an error message: one line (no control characters), at most `limit`."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
