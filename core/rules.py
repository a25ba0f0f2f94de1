"""Rule sets: every signal as a filter, saved as a JSON file a user can commit and reapply.

A rule set is a list of rules, each ``keep`` or ``drop`` with a ``where`` expression (a label, a
probe score, a cluster, a tag, ``is_duplicate``, or ``feature:N`` -- the activation of SAE
feature N) or a list of example ``ids`` (a map selection). Pure functions only: the store turns
the rules into SQL (:meth:`core.store.Store.rule_hits`), this module explains what they removed.

    {"name": "math-clean", "version": 1,
     "rules": [{"action": "keep", "where": "quality_proxy>=0.4"},
               {"action": "drop", "where": "feature:1234>0.5", "note": "code-block feature"},
               {"action": "drop", "where": "is_duplicate=1"}],
     "feature_run": {"model": "...", "layer": 6, "hook": "...", "sae": "...", "d_sae": 16384}}

Example:
    >>> rs = RuleSet.from_dict({"name": "x", "rules": [{"action": "drop", "where": "feature:3>0.5"}]})
    >>> rs.filters()
    [Filter(column='feature:3', op='>', value=0.5, action='drop')]
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import StudioError
from core.export import write_atomic_bytes
from core.filters import Action, Filter, feature_index, parse_rule_where, value_text, where_text

RULE_SET_VERSION = 1
# What names the SAE a feature index refers to: the feature run's config (+ d_sae, its size).
IDENTITY_KEYS = ("model", "layer", "hook", "sae", "d_sae")
NO_VALUE = "no value"
SELECTION = "selection"
_RULE_KEYS = {"action", "where", "ids", "note"}
_SET_KEYS = {"name", "description", "rules", "feature_run", "version"}


@dataclass(frozen=True)
class Rule:
    """One rule: keep or drop the rows matching ``where``, or the rows listed in ``ids``."""

    action: Action
    where: str | None = None
    ids: tuple[str, ...] | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.action not in ("keep", "drop"):
            raise StudioError(f"action must be keep or drop, got {self.action!r}")
        if (self.where is None) == (self.ids is None):
            raise StudioError("a rule needs exactly one of where or ids")
        if self.where is not None:
            parse_rule_where(self.where)

    @classmethod
    def from_filter(cls, f: Filter, *, note: str = "") -> Rule:
        return cls(action=f.action, where=where_text(f), note=note)

    def filter(self) -> Filter | None:
        """The store filter of a where rule, or of a drop-ids rule (None for keep-ids)."""
        if self.where is not None:
            f = parse_rule_where(self.where)
            return Filter(f.column, f.op, f.value, action=self.action)
        if self.action == "drop":
            return Filter("id", "in", list(self.ids or ()), action="drop")
        return None

    def describe(self) -> str:
        if self.where is not None:
            return f"{self.action} {self.where}"
        return f"{self.action} {len(self.ids or ())} listed ids"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
        if self.where is not None:
            out["where"] = self.where
        else:
            out["ids"] = list(self.ids or ())
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class RuleSet:
    """A named list of rules and the identity of the SAE its feature rules refer to."""

    name: str
    rules: tuple[Rule, ...] = ()
    description: str = ""
    feature_run: dict[str, Any] | None = field(default=None, hash=False)
    version: int = RULE_SET_VERSION

    def filters(self) -> list[Filter]:
        """The store filters, in rule order (keep-ids rules go to :meth:`ids` instead)."""
        return [f for r in self.rules if (f := r.filter()) is not None]

    def filter_rules(self) -> list[Rule]:
        """The rules behind :meth:`filters`, position for position."""
        return [r for r in self.rules if r.filter() is not None]

    def ids(self) -> list[str] | None:
        """The ids every keep-ids rule allows (their intersection), None without such rules."""
        out: list[str] | None = None
        for r in self.rules:
            if r.ids is not None and r.action == "keep":
                out = intersect_ids(out, list(r.ids))
        return out

    def hit_names(self) -> list[str]:
        """Names of the hit columns ``Store.rule_hits`` returns for :meth:`filters` and
        :meth:`ids`: ``"2: drop feature:12>0.5"`` (the rule's number in the file) ... and, when
        the set lists ids to keep, ``"selection"``."""
        names = [
            f"{i}: {r.where if r.action == 'keep' and r.where else r.describe()}"
            for i, r in enumerate(self.rules, 1)
            if r.filter() is not None
        ]
        return [*names, SELECTION] if self.ids() is not None else names

    def has_feature_rules(self) -> bool:
        return any(feature_index(f.column) is not None for f in self.filters())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "rules": [r.to_dict() for r in self.rules],
            "feature_run": self.feature_run,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "rule set") -> RuleSet:
        """Validate a parsed rule set; errors name ``source``, the rule number and the field."""
        if not isinstance(data, dict):
            raise StudioError(f"{source}: expected a JSON object with a 'rules' list")
        unknown = sorted(set(data) - _SET_KEYS)
        if unknown:
            raise StudioError(
                f"{source}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(_SET_KEYS))})"
            )
        version = data.get("version", RULE_SET_VERSION)
        if not isinstance(version, int) or version > RULE_SET_VERSION:
            raise StudioError(
                f"{source}: version {version!r} is newer than this tool's {RULE_SET_VERSION}"
            )
        name = data.get("name", "")
        if not isinstance(name, str):
            raise StudioError(f"{source}: name: expected text, got {name!r}")
        description = data.get("description", "") or ""
        if not isinstance(description, str):
            raise StudioError(f"{source}: description: expected text")
        rules = data.get("rules")
        if not isinstance(rules, list):
            raise StudioError(f"{source}: rules: expected a list of rules")
        feature_run = data.get("feature_run")
        if feature_run is not None and not isinstance(feature_run, dict):
            raise StudioError(f"{source}: feature_run: expected an object or null")
        return cls(
            name=name,
            rules=tuple(_rule(r, f"{source}: rule {i}") for i, r in enumerate(rules, 1)),
            description=description,
            feature_run=feature_run,
            version=version,
        )


def _rule(data: Any, where: str) -> Rule:
    if not isinstance(data, dict):
        raise StudioError(f"{where}: expected an object with action and where (or ids)")
    unknown = sorted(set(data) - _RULE_KEYS)
    if unknown:
        raise StudioError(
            f"{where}: unknown field {unknown[0]!r} (fields: action, where, ids, note)"
        )
    action = data.get("action")
    if action not in ("keep", "drop"):
        raise StudioError(f"{where}: action: expected keep or drop, got {action!r}")
    note = data.get("note", "") or ""
    if not isinstance(note, str):
        raise StudioError(f"{where}: note: expected text")
    if "where" in data and "ids" in data:
        raise StudioError(f"{where}: give where or ids, not both")
    if "ids" in data:
        ids = data["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise StudioError(f"{where}: ids: expected a list of example ids (text)")
        return Rule(action=action, ids=tuple(ids), note=note)
    expr = data.get("where")
    if expr is None:
        raise StudioError(f"{where}: where: missing (or give ids)")
    if not isinstance(expr, str):
        raise StudioError(f"{where}: where: expected text like 'quality>=0.5', got {expr!r}")
    try:
        parse_rule_where(expr)
    except StudioError as exc:
        said = exc.render("").lstrip() if exc.field == "where" else str(exc)
        raise StudioError(f"{where}: where: {said}") from None
    return Rule(action=action, where=expr, note=note)


def load_rule_set(path: str | Path) -> RuleSet:
    """Read and validate a rule set file; a bad file is a one-line StudioError naming it. A
    file without a name takes its stem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StudioError(f"rule set {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise StudioError(f"rule set {path}: not UTF-8 text") from None
    rs = parse_rule_set(text, source=str(path))
    return rs if rs.name else replace(rs, name=path.stem)


def parse_rule_set(text: str, *, source: str) -> RuleSet:
    """A rule set from JSON text (an uploaded file); errors name ``source``, the line of bad
    JSON, or the rule number and field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StudioError(
            f"{source}: line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})"
        ) from None
    return RuleSet.from_dict(data, source=source)


def rule_set_bytes(rule_set: RuleSet) -> bytes:
    """The file's bytes: sorted keys, two-space indent, a final newline (stable under reload)."""
    return (
        json.dumps(rule_set.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    ).encode()


def save_rule_set(path: str | Path, rule_set: RuleSet) -> Path:
    """Write a rule set atomically (temp file + rename), with a plain file's mode (0666 less
    the umask). Returns the path."""
    path = Path(path)
    write_atomic_bytes(path, rule_set_bytes(rule_set))
    return path


def rule_set_path(folder: str | Path, name: str) -> Path:
    """``folder/<name>.json`` with the name made safe for a file name."""
    stem = re.sub(r"[^\w.-]+", "-", name.strip()).strip("-.")
    if not stem:
        raise StudioError(f"rule set name {name!r}: use letters, digits, '-', '_' or '.'")
    return Path(folder) / f"{stem}.json"


def feature_identity(run: Mapping[str, Any]) -> dict[str, Any]:
    """What names a feature run's SAE, from its run record (``Store.run``: config + summary):
    model, layer, hook, sae and d_sae. A rule set records it so feature rules are checked
    before they are applied to features of another SAE."""
    config = dict(run.get("config") or {})
    summary = run.get("summary") or {}
    if summary.get("d_sae") is not None:
        config["d_sae"] = summary["d_sae"]
    return {k: config[k] for k in IDENTITY_KEYS if config.get(k) is not None}


def check_rule_set(
    rule_set: RuleSet,
    *,
    columns: Collection[str],
    feature_run_config: Mapping[str, Any] | None,
    example_ids: Collection[str] | None = None,
) -> list[str]:
    """Check a rule set against a dataset before applying it; returns the warnings.

    ``columns``: what the dataset's filters may name (``Store.filter_columns``);
    ``feature_run_config``: :func:`feature_identity` of the dataset's feature run (None without
    one); ``example_ids``: the dataset's ids, to count listed ids that are not in it.
    Raises a one-line StudioError naming the first rule that cannot apply (a missing column; a
    feature rule on another SAE, or with no feature run).
    """
    errors: list[str] = []
    warnings: list[str] = []
    known = set(columns)
    for i, rule in enumerate(rule_set.rules, 1):
        f = rule.filter()
        if f is not None and rule.where is not None:
            n = feature_index(f.column)
            if n is None and f.column not in known:
                errors.append(
                    f"rule {i} ({rule.describe()}): the dataset has no column {f.column!r}"
                )
            elif n is not None:
                problem, warning = _feature_check(rule_set.feature_run, feature_run_config, n)
                if problem:
                    errors.append(f"rule {i} ({rule.describe()}): {problem}")
                if warning:
                    warnings.append(f"rule {i} ({rule.describe()}): {warning}")
        if rule.ids is not None and example_ids is not None:
            present = set(example_ids)
            missing = sum(1 for x in rule.ids if x not in present)
            if missing:
                warnings.append(
                    f"rule {i} ({rule.describe()}): {missing} of {len(rule.ids)} ids are not in "
                    "this dataset"
                )
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise StudioError(errors[0] + more)
    return warnings


def _feature_check(
    ref: Mapping[str, Any] | None, have: Mapping[str, Any] | None, n: int
) -> tuple[str | None, str | None]:
    """(error, warning) of a feature-N rule recorded for SAE ``ref`` on a dataset whose feature
    run is ``have`` (both :func:`feature_identity`)."""
    if have is None:
        return "the dataset has no feature run; run featurize with the rule set's SAE first", None
    ref = ref or {}
    for k in IDENTITY_KEYS:
        if k in ref and k in have and ref[k] != have[k]:
            return (
                f"the rule set's SAE differs from the dataset's feature run ({k} {ref[k]!r} vs "
                f"{have[k]!r}); feature indices are only meaningful for the same SAE"
            ), None
    d_sae = have.get("d_sae")
    if d_sae is not None and n >= int(d_sae):
        return f"feature {n} is out of range for an SAE of {d_sae} features", None
    if not ref:
        return None, (
            "the rule set does not record its SAE, so its feature index is not checked against "
            "this dataset's"
        )
    return None, None


def intersect_ids(a: Sequence[str] | None, b: Sequence[str] | None) -> list[str] | None:
    """Ids allowed by both selections (None = no selection), in ``a``'s order."""
    if a is None:
        return None if b is None else list(b)
    if b is None:
        return list(a)
    keep = set(b)
    return [x for x in a if x in keep]


def hit_names(filters: Sequence[Filter], *, selection: bool = False) -> list[str]:
    """Names of the hit columns of ``Store.rule_hits``: ``"1: quality>=0.5"`` ... and, with a
    selection, ``"selection"``."""
    names = [f"{i}: {_short(f)}" for i, f in enumerate(filters, 1)]
    return [*names, SELECTION] if selection else names


def _short(f: Filter) -> str:
    """``Filter.describe`` with whole numbers written without ``.0`` and long lists cut."""
    if f.op in ("in", "not in"):
        values = [value_text(v) for v in f.value]
        shown = ",".join(values[:5]) + (f",… ({len(values)} values)" if len(values) > 5 else "")
        text = f"{f.column} {f.op} {shown}"
    else:
        text = f"{f.column}{f.op}{value_text(f.value)}"
    return f"drop {text}" if f.action == "drop" else text


# --- difficulty: which column, and its bands ---------------------------------------------------
def difficulty_column(
    labels: Sequence[str],
    scores: Mapping[str, str],
    preferred: str | None,
    *,
    others: Collection[str] = (),
) -> tuple[str | None, str | None]:
    """(column, higher_is) of the difficulty to order and band by; higher_is is "harder" or
    "easier".

    ``labels``: the dataset's numeric labels; ``scores``: the difficulty probes' score names ->
    their run's ``higher_is`` (:func:`difficulty_scores`); ``others``: other numeric
    columns a user may name (read as higher = harder). Without ``preferred``: the label
    "difficulty", else a difficulty probe's score (first by name), else a pass-rate label
    (``pass_rate`` first, then any ``pass*``; higher = easier), else (None, None).

        >>> difficulty_column(["pass_at_1", "pass_rate"], {}, None)
        ('pass_rate', 'easier')
    """
    if preferred is not None:
        if preferred in labels:
            return preferred, _label_direction(preferred)
        if preferred in scores:
            return preferred, scores[preferred]
        if preferred in others:
            return preferred, "harder"
        known = sorted({*labels, *scores, *others})
        raise StudioError(
            f"difficulty column {preferred!r} is not a label or score of this dataset; "
            f"known: {', '.join(known) or 'none'}"
        )
    if "difficulty" in labels:
        return "difficulty", "harder"
    if scores:
        name = sorted(scores)[0]
        return name, scores[name]
    passes = sorted(n for n in labels if n.startswith("pass"))
    if passes:
        name = "pass_rate" if "pass_rate" in passes else passes[0]
        return name, "easier"
    return None, None


def _label_direction(name: str) -> str:
    return "easier" if name.startswith("pass") else "harder"


@dataclass(frozen=True)
class Bands:
    """Difficulty bands of a column, named and ordered easy -> hard.

    With at most ``max_values`` distinct values, one band per value (``values``); else the
    quartiles of the reference values (``edges``: min, q1, median, q3, max). A missing value
    falls in the band "no value", after the others.
    """

    names: tuple[str, ...]
    higher_is: str
    values: tuple[float, ...] | None = None
    edges: tuple[float, ...] | None = None

    def assign(self, x: np.ndarray) -> np.ndarray:
        """The band name of every value (an object array)."""
        x = np.asarray(x, dtype=np.float64)
        out = np.full(len(x), NO_VALUE, dtype=object)
        ok = ~np.isnan(x)
        if self.values is not None:
            # values go easy -> hard in ``names``; map each value to its position
            pos = {v: i for i, v in enumerate(self.values)}
            for i in np.flatnonzero(ok):
                j = pos.get(float(x[i]))
                out[i] = self.names[j] if j is not None else _num(float(x[i]))
            return out
        assert self.edges is not None
        q = np.searchsorted(np.asarray(self.edges[1:4]), x[ok], side="right")  # 0..3, low -> high
        if self.higher_is == "easier":
            q = 3 - q
        out[ok] = np.asarray(self.names, dtype=object)[q]
        return out

    def order(self) -> list[str]:
        return [*self.names, NO_VALUE]


def difficulty_bands(reference: np.ndarray, *, higher_is: str, max_values: int = 10) -> Bands:
    """Bands from the whole dataset's difficulty values (NaN = no value).

    >>> difficulty_bands(np.array([1.0, 3, 2, 2]), higher_is="harder").names
    ('1', '2', '3')
    >>> difficulty_bands(np.array([0.0, 1.0, 0.5]), higher_is="easier").names
    ('1', '0.5', '0')
    """
    if higher_is not in ("harder", "easier"):
        raise StudioError(f"higher_is must be harder or easier, got {higher_is!r}")
    x = np.asarray(reference, dtype=np.float64)
    x = x[~np.isnan(x)]
    distinct = np.unique(x)
    if len(distinct) <= max_values:
        ordered = [float(v) for v in (distinct[::-1] if higher_is == "easier" else distinct)]
        names = [_num(v) for v in ordered]
        if len(set(names)) < len(names):
            names = [repr(v) for v in ordered]
        return Bands(tuple(names), higher_is, values=tuple(ordered))
    edges = tuple(float(e) for e in np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0]))
    spans = [f"{edges[i]:.3g}–{edges[i + 1]:.3g}" for i in range(4)]  # low -> high
    if higher_is == "easier":
        spans = spans[::-1]
    names = (
        f"1 easiest: {spans[0]}",
        f"2: {spans[1]}",
        f"3: {spans[2]}",
        f"4 hardest: {spans[3]}",
    )
    return Bands(names, higher_is, edges=edges)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"


def band_counts(values: np.ndarray, *, reference: np.ndarray, higher_is: str) -> dict[str, int]:
    """Rows per difficulty band (bands from ``reference``, the whole dataset), easy -> hard;
    "no value" only when some value is missing. For a manifest: JSON-ready, stable order.

        >>> band_counts(np.array([1.0, 1, 3]), reference=np.array([1.0, 2, 3]), higher_is="harder")
        {'1': 2, '2': 0, '3': 1}
    """
    bands = difficulty_bands(reference, higher_is=higher_is)
    assigned = pd.Series(bands.assign(np.asarray(values, dtype=np.float64)))
    counts = assigned.value_counts()
    out = {name: int(counts.get(name, 0)) for name in bands.names}
    for name in counts.index:  # a missing value, or a value the reference did not hold
        if name not in out:
            out[str(name)] = int(counts[name])
    return out


# --- the removed view ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RemovalReport:
    """What a set of rules removes, and what remains.

    per_rule: rule, removes (rows it removes on its own), first (rows it removes that no
    earlier rule removed), only (rows no other rule removes). rows: id, cluster, band,
    removed, why (the names of the rules that remove the row, in rule order). per_cluster /
    per_band: total, kept, removed, kept_share. ``bands`` is None without a difficulty column.
    """

    per_rule: pd.DataFrame
    rows: pd.DataFrame
    per_cluster: pd.DataFrame
    per_band: pd.DataFrame
    bands: Bands | None
    difficulty: str | None
    total: int
    kept: int

    def removed_rows(self) -> pd.DataFrame:
        """The removed rows with a readable ``why``."""
        out = pd.DataFrame(self.rows.loc[self.rows["removed"]]).drop(columns=["removed"])
        out["why"] = ["; ".join(w) for w in out["why"]]
        return out.reset_index(drop=True)


def removal_report(
    hits: pd.DataFrame,
    rules: Sequence[str],
    *,
    difficulty: str | None,
    higher_is: str | None,
) -> RemovalReport:
    """The removed view from ``Store.rule_hits`` output: one row per example with boolean
    ``r0, r1, ...`` (and ``r_sel``) True where that rule removes the row; ``rules`` names those
    columns in that order (:func:`hit_names`). ``difficulty`` is a column of ``hits`` to band by.
    """
    hit_cols = sorted(
        (c for c in hits.columns if re.fullmatch(r"r\d+", c)), key=lambda c: int(c[1:])
    )
    if "r_sel" in hits.columns:
        hit_cols.append("r_sel")
    if len(rules) != len(hit_cols):
        raise ValueError(f"{len(rules)} rule names for {len(hit_cols)} hit columns {hit_cols}")
    n = len(hits)
    m = (
        hits[hit_cols].fillna(False).to_numpy(dtype=bool)
        if hit_cols
        else np.zeros((n, 0), dtype=bool)
    )
    n_hits = m.sum(axis=1)
    earlier = np.zeros(n, dtype=bool)
    per_rule = []
    for j, name in enumerate(rules):
        col = m[:, j]
        per_rule.append(
            {
                "rule": name,
                "removes": int(col.sum()),
                "first": int((col & ~earlier).sum()),
                "only": int((col & (n_hits == 1)).sum()),
            }
        )
        earlier |= col
    removed = n_hits > 0
    names = np.asarray(list(rules), dtype=object)
    why = [list(names[row]) for row in m]
    # every other column of the hits (id, cluster, difficulty, prompt ...) describes the row
    rows = pd.DataFrame(hits.drop(columns=hit_cols)).reset_index(drop=True)
    if "cluster" in rows.columns:
        rows["cluster"] = pd.to_numeric(rows["cluster"], errors="coerce").fillna(-1).astype(int)
    bands = None
    if difficulty is not None:
        if difficulty not in hits.columns:
            raise StudioError(f"difficulty column {difficulty!r} is not among the hits' columns")
        values = pd.to_numeric(hits[difficulty], errors="coerce").to_numpy(dtype=np.float64)
        bands = difficulty_bands(values, higher_is=higher_is or "harder")
        rows[difficulty] = values
        rows["band"] = bands.assign(values)
    rows["removed"] = removed
    rows["why"] = why
    per_cluster = (
        _remaining(rows, "cluster") if "cluster" in rows.columns else _remaining(rows, None)
    )
    per_band = _remaining(rows, "band") if bands is not None else _remaining(rows, None)
    if bands is not None:
        order = {b: i for i, b in enumerate(bands.order())}
        per_band = per_band.sort_values("band", key=lambda s: s.map(order)).reset_index(drop=True)
    return RemovalReport(
        per_rule=pd.DataFrame(per_rule, columns=["rule", "removes", "first", "only"]),
        rows=rows,
        per_cluster=per_cluster,
        per_band=per_band,
        bands=bands,
        difficulty=difficulty,
        total=n,
        kept=int((~removed).sum()),
    )


def _remaining(rows: pd.DataFrame, by: str | None) -> pd.DataFrame:
    """total, kept, removed and kept_share per value of ``by`` (an empty frame for None)."""
    if by is None:
        return pd.DataFrame(columns=["total", "kept", "removed", "kept_share"])
    g = rows.groupby(by, sort=True)["removed"]
    out = pd.DataFrame({"total": g.size(), "removed": g.sum().astype(int)})
    out.insert(1, "kept", out["total"] - out["removed"])
    out["kept_share"] = out["kept"] / out["total"]
    return pd.DataFrame(out.reset_index())
