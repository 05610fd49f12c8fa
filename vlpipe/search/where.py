"""Search filters: a small SQL-like condition over a run's columns, parsed into a pyarrow
compute Expression.

`license = 'cc-by' AND orig_width >= 512`, `score > 0.5 OR (format IN ('PNG','WEBP') AND NOT
caption LIKE '%dog%')`, `text IS NULL`, `crawled >= '2024-01-02'`.

Why a parser of our own rather than an SQL engine: the filter comes from whoever can reach
`vlpipe serve`, and an engine that takes SQL text can also read files, call functions and run
statements. Here the text only ever becomes an Expression of column references, literals and a
fixed set of operators; anything else (a function call, a subquery, `;`, comments) is refused with
one line saying where. Every column is checked against the run's schema and every literal against
its column's type, so a typo fails at once instead of silently matching nothing.

Grammar (keywords case-insensitive):
    filter    := or
    or        := and (OR and)*
    and       := not (AND not)*
    not       := NOT not | '(' or ')' | predicate
    predicate := column (op value | [NOT] IN '(' value (',' value)* ')' | [NOT] LIKE string
                 | [NOT] BETWEEN value AND value | IS [NOT] NULL)
    op        := = | != | <> | < | <= | > | >=
    value     := 'string' ('' is a quote) | integer | float | TRUE | FALSE
    column    := [A-Za-z_][A-Za-z0-9_.]* | "quoted name" ("" is a quote)
LIKE takes SQL's % and _ (backslash escapes them). NULLs follow SQL: a comparison with a null
value is unknown and the row does not match. A string compared with a timestamp or date column is
read as an ISO date/time (without an offset: UTC).
"""

from __future__ import annotations

import contextlib
import difflib
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import reduce

import pyarrow as pa
import pyarrow.compute as pc

from vlpipe.errors import VlpipeError
from vlpipe.search.where_values import Column, literal, printable, unquote

MAX_CHARS = 2000
MAX_DEPTH = 32  # parentheses and NOTs; also bounds the parser's recursion
KEYWORDS = frozenset({"and", "or", "not", "in", "like", "is", "null", "between", "true", "false"})
#: SQL words that start statements or subqueries: refused as bare names, never columns
STATEMENT_WORDS = frozenset(
    "select from where union insert update delete drop create alter attach detach copy pragma"
    " exec execute with values join exists case cast call load install set".split()
)
#: vectors and image bytes: nothing a filter can compare
UNFILTERABLE = frozenset({"embedding", "thumbnail"})
_EQ, _NE = operator.eq, operator.ne
OPERATORS = {"=": _EQ, "!=": _NE, "<>": _NE, "<": operator.lt, "<=": operator.le}
OPERATORS.update({">": operator.gt, ">=": operator.ge})
_TOKEN = re.compile(
    r"""(?P<ws>\s+)
    |(?P<comment>--|/\*)
    |(?P<string>'(?:[^']|'')*')
    |(?P<qname>"(?:[^"]|"")*")
    |(?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    |(?P<op><=|>=|<>|!=|=|<|>)
    |(?P<punct>[(),])
    |(?P<semi>;)""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # name, qname, string, number, op, punct, end
    text: str  # as written
    pos: int  # offset in the filter (0-based)

    def is_word(self, *words: str) -> bool:
        return self.kind == "name" and self.text.lower() in words

    def literal_kind(self) -> str:
        if self.kind in ("string", "number"):
            return self.kind
        return "bool" if self.is_word("true", "false") else "other"

    def show(self) -> str:
        """The token for an error message: one line, at most 40 characters."""
        if self.kind == "end":
            return "the end of the filter"
        return printable(self.text)


@dataclass(frozen=True)
class Where:
    """A parsed filter: its text, the Expression, and the columns it reads (in order)."""

    text: str
    expression: pc.Expression
    columns: tuple[str, ...]


def parse_where(text: str, schema: pa.Schema) -> Where:
    """Parse `text` against the run's `schema`; one-line VlpipeError on anything wrong."""
    if not isinstance(text, str) or not text.strip():
        raise VlpipeError("bad filter: it is empty; write a condition such as license = 'cc-by'")
    if len(text) > MAX_CHARS:
        raise VlpipeError(f"bad filter: it is {len(text)} characters long, at most {MAX_CHARS}")
    parser = _Parser(tokenize(text), schema)
    expression = parser.parse()
    return Where(text, expression, tuple(parser.columns))


def _error(pos: int, message: str) -> VlpipeError:
    return VlpipeError(f"bad filter at column {pos + 1}: {message}")


def tokenize(text: str) -> list[Token]:
    """The filter's tokens, ending with an `end` token. Comments and `;` are refused here, so a
    hostile text fails before any of it is interpreted."""
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise _error(pos, _bad_character(text[pos]))
        kind, value = match.lastgroup, match.group()
        if kind == "comment":
            raise _error(pos, f"comments are not allowed: {value}")
        if kind == "semi":
            raise _error(pos, "stacked statements are not allowed: ';'")
        if kind != "ws":
            tokens.append(Token(kind, value, pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _bad_character(char: str) -> str:
    if char == "'":
        return "unterminated string: a ' without its closing '"
    if char == '"':
        return 'unterminated quoted column name: a " without its closing "'
    shown = char if char.isprintable() else f"U+{ord(char):04X}"
    return f"unexpected character {shown!r}"


class _Parser:
    """Recursive descent over the tokens; builds the Expression as it goes."""

    def __init__(self, tokens: list[Token], schema: pa.Schema):
        self.tokens, self.i, self.depth = tokens, 0, 0
        self.schema = schema
        self.columns: list[str] = []

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += min(1, len(self.tokens) - 1 - self.i)  # stay on `end`
        return token

    def expect_word(self, word: str, after: str) -> Token:
        token = self.take()
        if not token.is_word(word):
            raise _error(token.pos, f"expected {word.upper()} after {after}, found {token.show()}")
        return token

    @contextlib.contextmanager
    def nested(self, token: Token) -> Iterator[None]:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(token.pos, f"the filter nests deeper than {MAX_DEPTH} levels")
        yield
        self.depth -= 1

    # ---- boolean structure ---------------------------------------------------------------------

    def parse(self) -> pc.Expression:
        expression = self.or_()
        token = self.peek()
        if token.kind != "end":
            what = "')' without its '('" if token.text == ")" else token.show()
            raise _error(token.pos, f"unexpected {what} after a complete condition")
        return expression

    def or_(self) -> pc.Expression:
        terms = [self.and_()]
        while self.peek().is_word("or"):
            self.take()
            terms.append(self.and_())
        return reduce(lambda a, b: a | b, terms)

    def and_(self) -> pc.Expression:
        terms = [self.not_()]
        while self.peek().is_word("and"):
            self.take()
            terms.append(self.not_())
        return reduce(lambda a, b: a & b, terms)

    def not_(self) -> pc.Expression:
        token = self.peek()
        if token.is_word("not"):
            self.take()
            with self.nested(token):
                return ~self.not_()
        if token.text == "(" and token.kind == "punct":
            self.take()
            with self.nested(token):
                expression = self.or_()
            close = self.take()
            if close.text != ")" or close.kind != "punct":
                raise _error(
                    close.pos,
                    f"expected ')' to close the '(' at column {token.pos + 1}, "
                    f"found {close.show()}",
                )
            return expression
        return self.predicate()

    # ---- one condition -------------------------------------------------------------------------

    def predicate(self) -> pc.Expression:
        column = self.column()
        token = self.take()
        if token.is_word("is"):
            negate = self.peek().is_word("not")
            if negate:
                self.take()
            self.expect_word("null", "IS NOT" if negate else "IS")
            return column.field.is_valid() if negate else column.field.is_null()
        negate = token.is_word("not")
        if negate:
            token = self.take()
        if token.is_word("in"):
            expression = self.in_list(column, token)
        elif token.is_word("like"):
            expression = self.like(column, token)
        elif token.is_word("between"):
            low = self.value(column)
            self.expect_word("and", "BETWEEN's first value")
            expression = (column.field >= low) & (column.field <= self.value(column))
        elif token.kind == "op" and not negate:
            expression = OPERATORS[token.text](column.field, self.value(column))
        else:
            wanted = "IN, LIKE or BETWEEN after NOT" if negate else "an operator"
            raise _error(token.pos, f"expected {wanted} after {column.name}, found {token.show()}")
        return ~expression if negate else expression

    def in_list(self, column: Column, token: Token) -> pc.Expression:
        opening = self.take()
        if opening.text != "(" or opening.kind != "punct":
            raise _error(opening.pos, f"expected '(' after IN, found {opening.show()}")
        values = [self.value(column)]
        while (sep := self.take()).text == ",":
            values.append(self.value(column))
        if sep.text != ")":
            raise _error(sep.pos, f"expected ',' or ')' in the IN list, found {sep.show()}")
        if any(pa.types.is_floating(v.type) for v in values):
            value_set = pa.array([v.as_py() for v in values], pa.float64())
        else:
            value_set = pa.array([v.as_py() for v in values], values[0].type)
        # SQL: NULL IN (...) is unknown, so neither IN nor NOT IN matches a null
        unknown = pa.scalar(None, pa.bool_())
        return pc.if_else(
            column.field.is_null(), unknown, pc.is_in(column.field, value_set=value_set)
        )

    def like(self, column: Column, token: Token) -> pc.Expression:
        if column.kind != "string":
            raise _error(token.pos, f"LIKE needs a string column, {column.describe()}")
        pattern = self.take()
        if pattern.kind != "string":
            raise _error(pattern.pos, f"LIKE takes a quoted pattern, found {pattern.show()}")
        return pc.match_like(column.field, unquote(pattern.text))

    # ---- operands ------------------------------------------------------------------------------

    def column(self) -> Column:
        token = self.take()
        if token.kind == "qname":
            return self.lookup(token.text[1:-1].replace('""', '"'), token)
        if token.kind != "name":
            value = token.kind in ("string", "number")
            hint = " (the column goes on the left: license = 'cc-by')" if value else ""
            raise _error(token.pos, f"expected a column name, found {token.show()}{hint}")
        if self.peek().text == "(":
            raise _error(token.pos, f"functions are not allowed: {token.show()}(...)")
        lowered = token.text.lower()
        if lowered in KEYWORDS:
            raise _error(token.pos, f"expected a column name, found {token.text.upper()}")
        if lowered in STATEMENT_WORDS and token.text not in self.schema.names:
            raise _error(
                token.pos, f"SQL statements and subqueries are not allowed: {token.show()}"
            )
        return self.lookup(token.text, token)

    def lookup(self, name: str, token: Token) -> Column:
        if name in UNFILTERABLE:
            raise _error(token.pos, f"column {name} cannot be filtered on")
        index = self.schema.get_field_index(name)
        if index < 0:
            raise _error(token.pos, _unknown(name, self.schema))
        if name not in self.columns:
            self.columns.append(name)
        return Column(name, self.schema.field(index).type)

    def value(self, column: Column) -> pa.Scalar:
        token = self.take()
        if token.kind == "name" and self.peek().text == "(":
            raise _error(token.pos, f"functions are not allowed: {token.show()}(...)")
        if token.is_word("null"):
            raise _error(token.pos, "NULL is not a value to compare with: use IS [NOT] NULL")
        if token.literal_kind() == "other":
            raise _error(token.pos, f"expected a value for {column.name}, found {token.show()}")
        try:
            return literal(column, token.literal_kind(), token.text)
        except ValueError as exc:
            raise _error(token.pos, str(exc)) from None


def _unknown(name: str, schema: pa.Schema) -> str:
    names = [n for n in schema.names if n not in UNFILTERABLE]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown column {printable(name)!r}{hint}; the run's columns are {', '.join(names)}"
