"""The filter language, in one place: what a rule or ``--where`` / ``--drop`` says, parsed into
:class:`Filter`, written back as text, and the SQL each operator renders to (the store fills in
the column and binds the values; no user text is ever pasted into SQL).

:data:`OPERATORS` is the table: each operator's SQL template and its words, one line each (as
datasette's filters.py keeps them). ``{col}`` is the column's expression, ``?`` the bound
value; for ``in`` / ``not in`` the value is a list and ``{cast}`` its element type.

    >>> parse_where("difficulty<=3")
    Filter(column='difficulty', op='<=', value=3.0, action='keep')
    >>> parse_where("cluster in 1,4")
    Filter(column='cluster', op='in', value=[1.0, 4.0], action='keep')
    >>> parse_rule_where("feature:12 > 0.5")
    Filter(column='feature:12', op='>', value=0.5, action='keep')
    >>> where_text(Filter("cluster", "in", [3.0, 5.0], action="drop"))
    'cluster in 3,5'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import StudioError

Op = Literal["<", "<=", ">", ">=", "=", "!=", "in", "not in"]
# operator -> (SQL template, words)
OPERATORS: dict[str, tuple[str, str]] = {
    "<": ("{col} < ?", "less than"),
    "<=": ("{col} <= ?", "at most"),
    ">": ("{col} > ?", "greater than"),
    ">=": ("{col} >= ?", "at least"),
    "=": ("{col} = ?", "equal to"),
    "!=": ("{col} != ?", "not equal to"),
    "in": ("list_contains(CAST(? AS {cast}[]), CAST({col} AS {cast}))", "one of"),
    "not in": ("NOT list_contains(CAST(? AS {cast}[]), CAST({col} AS {cast}))", "none of"),
}
LIST_OPS = ("in", "not in")

Action = Literal["keep", "drop"]
# A filter column ``feature:N`` is the example's pooled activation of SAE feature N in the view's
# feature run: 0 where N is not among the example's stored top-k features.
FEATURE_PREFIX = "feature:"


@dataclass(frozen=True)
class Filter:
    """One rule on the wide example view: ``column op value``, and what to do with the rows.

    ``value`` is a number, a string, or for ``in``/``not in`` a list of them. ``action`` "keep"
    keeps the rows where the condition holds (a row whose value is NULL is removed); "drop"
    removes the rows where it holds (a NULL value keeps the row).

        >>> Filter("cluster", "in", [3, 5], action="drop").describe()
        'drop cluster in 3,5'
    """

    column: str
    op: Op
    value: Any
    action: Action = "keep"

    def __post_init__(self) -> None:
        if self.action not in ("keep", "drop"):
            raise StudioError(f"filter on {self.column!r}: action must be keep or drop")

    def describe(self) -> str:
        if self.op in ("in", "not in"):
            text = f"{self.column} {self.op} {','.join(str(v) for v in self.value)}"
        else:
            text = f"{self.column}{self.op}{self.value}"
        return f"drop {text}" if self.action == "drop" else text


def feature_index(column: str) -> int | None:
    """``"feature:12"`` -> 12; None for a column that is not a feature (a StudioError when it
    starts with ``feature:`` but is not followed by a whole number)."""
    if not column.startswith(FEATURE_PREFIX):
        return None
    rest = column[len(FEATURE_PREFIX) :]
    if not (rest.isascii() and rest.isdigit()):
        raise StudioError(f"column {column!r}: expected feature:N with N a feature index")
    return int(rest)


# the comparison operators of OPERATORS, longest first so "<=" is not read as "<"; "==" is "="
_COMPARE = "|".join(
    re.escape(op) for op in sorted([*OPERATORS, "=="], key=len, reverse=True) if op not in LIST_OPS
)
_WHERE = re.compile(rf"^\s*([A-Za-z_][\w.\-]*)\s*({_COMPARE}|\s+not\s+in\s+|\s+in\s+)\s*(.+?)\s*$")


def _value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text.strip().strip("'\"")


def parse_where(expr: str) -> Filter:
    """``col<op>value`` with op one of < <= > >= = != , or ``col in a,b`` / ``col not in a,b``."""
    m = _WHERE.match(expr)
    if not m:
        raise StudioError(
            f"{{field}} {expr!r}: expected COLUMN<op>VALUE (op: < <= > >= = !=) "
            "or 'COLUMN in A,B,...'",
            field="where",
        )
    col, op, raw = m.group(1), " ".join(m.group(2).split()), m.group(3)
    parts = [v for v in raw.split(",") if v.strip()] if op in ("in", "not in") else [raw]
    values = [_value(v) for v in parts]
    for text, v in zip(parts, values, strict=True):
        check_finite(v, expr=expr, text=text)
    if op in ("in", "not in"):
        return Filter(col, op, values)  # type: ignore[arg-type]
    return Filter(col, "=" if op == "==" else op, values[0])  # type: ignore[arg-type]


def where_text(f: Filter) -> str:
    """The ``where`` expression that parses back to ``f``'s condition (without the action).

    >>> where_text(Filter("cluster", "in", [3.0, 5.0], action="drop"))
    'cluster in 3,5'
    """
    if f.op in ("in", "not in"):
        parts = [value_text(v) for v in f.value]
        if any("," in p for p in parts):
            raise StudioError(f"rule {f.describe()!r}: a value with a comma cannot be saved")
        return f"{f.column} {f.op} {','.join(parts)}"
    return f"{f.column}{f.op}{value_text(f.value)}"


def value_text(v: Any) -> str:
    """A filter value as written in a where expression: whole numbers without ``.0``."""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v)


def check_finite(value: float | str, *, expr: str, text: str) -> None:
    """Refuse nan/inf as a filter value: every comparison with nan is false, so the filter would
    silently keep or drop everything. Quoted text ('nan') stays text, for a tag of that name."""
    if isinstance(value, float) and not math.isfinite(value):
        raw = text.strip()
        raise StudioError(
            f"{{field}} {expr!r}: {raw!r} is not a finite number (compare with a number, or "
            f"quote it, '{raw}', to match text)",
            field="where",
        )


_FEATURE_WHERE = re.compile(rf"^\s*feature:(\S*?)\s*({_COMPARE})\s*(.+?)\s*$")


def parse_rule_where(expr: str) -> Filter:
    """:func:`parse_where`, plus ``feature:N<op>T`` (N a feature index, T a number).

    >>> parse_rule_where("feature:12 > 0.5")
    Filter(column='feature:12', op='>', value=0.5, action='keep')
    """
    m = _FEATURE_WHERE.match(expr)
    if m is None:
        if expr.strip().startswith("feature:"):
            raise StudioError(
                f"{{field}} {expr!r}: a feature rule is feature:N<op>T (op: < <= > >= = !=)",
                field="where",
            )
        return parse_where(expr)
    column, op, raw = f"feature:{m.group(1)}", m.group(2), m.group(3)
    feature_index(column)  # feature:N with N a whole number
    try:
        value = float(raw)
    except ValueError:
        raise StudioError(
            f"{{field}} {expr!r}: a feature threshold must be a number, got {raw!r}",
            field="where",
        ) from None
    check_finite(value, expr=expr, text=raw)
    return Filter(column, "=" if op == "==" else op, value)  # type: ignore[arg-type]
