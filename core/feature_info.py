"""Reading the features: descriptions, labels, search and token highlighting.

Pure functions over frames and strings (the SQL behind them is in core.store): parse a
Neuronpedia-style description export, label a feature by its description or else its top tokens,
search features by text, and mark where a feature fires in an example's text as escaped HTML.

Example:
    >>> parse_descriptions({"12": "sums of money"}, source="d.json")
    {12: 'sums of money'}
    >>> highlight_html("a <b> sum", spans=[(6, 9, 1.0)])  # doctest: +ELLIPSIS
    'a &lt;b&gt; <mark style=...>sum</mark>'
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from core.clustering import feature_names
from core.errors import StudioError

INDEX_KEYS = ("index", "feature", "featureIndex", "feature_index", "feature_id")
TEXT_KEYS = ("description", "explanation")
# Sub-word markers of common tokenizers: WordPiece continuation, GPT-2 byte-BPE space, SentencePiece.
CONTINUATION = "##"
WORD_START = ("Ġ", "▁")


# --- descriptions ------------------------------------------------------------------------------
def parse_descriptions(data: Any, *, source: str) -> dict[int, str]:
    """Feature index -> description from the shapes Neuronpedia exports and people hand-write:

    - a list of objects with an index (``index``, ``feature``, ``featureIndex``; an int or a
      string of digits) and a text (``description`` or ``explanation``);
    - the same list under an ``"explanations"`` key;
    - a mapping ``{"123": "description"}`` (values may also be such objects).

    The first description of an index wins (exports may hold several explainers' takes).
    Raises a one-line StudioError naming ``source`` and the bad entry.

    >>> parse_descriptions([{"index": "3", "description": "years"}], source="x.json")
    {3: 'years'}
    """
    if isinstance(data, dict) and "explanations" in data:
        data = data["explanations"]
    out: dict[int, str] = {}
    if isinstance(data, list):
        for i, entry in enumerate(data):
            where = f"{source}: entry {i}"
            if not isinstance(entry, dict):
                raise StudioError(f"{where}: expected an object, got {_short(entry)}")
            key = next((k for k in INDEX_KEYS if k in entry), None)
            if key is None:
                raise StudioError(
                    f"{where}: no feature index (one of {', '.join(INDEX_KEYS)}) in {_short(entry)}"
                )
            fid = _index(entry[key], where=where)
            out.setdefault(fid, _text(entry, where=where))
    elif isinstance(data, dict):
        for key, value in data.items():
            where = f"{source}: entry {key!r}"
            fid = _index(key, where=where)
            text = value if isinstance(value, str) else _text(value, where=where)
            out.setdefault(fid, _clean(text, where=where))
    else:
        raise StudioError(
            f"{source}: expected a list of {{index, description}} objects or an "
            f"{{index: description}} mapping, got {type(data).__name__}"
        )
    return out


def read_descriptions(path: str | Path) -> dict[int, str]:
    """Read and parse a description file (JSON, or JSON Lines of objects)."""
    path = Path(path)
    if not path.is_file():
        raise StudioError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) < 2:
            raise StudioError(f"{path}: malformed JSON ({exc.msg}, line {exc.lineno})") from exc
        data = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise StudioError(f"{path} line {n}: malformed JSON ({err.msg})") from err
    return parse_descriptions(data, source=str(path))


def _index(value: Any, *, where: str) -> int:
    if isinstance(value, bool):
        raise StudioError(f"{where}: feature index must be a whole number, got {value!r}")
    if isinstance(value, int):
        fid = value
    elif isinstance(value, str) and value.strip().isdigit():
        fid = int(value.strip())
    else:
        raise StudioError(f"{where}: feature index must be a whole number, got {_short(value)}")
    if fid < 0:
        raise StudioError(f"{where}: feature index must not be negative, got {fid}")
    return fid


def _text(entry: Any, *, where: str) -> str:
    if not isinstance(entry, dict):
        raise StudioError(f"{where}: expected a description string or object, got {_short(entry)}")
    key = next((k for k in TEXT_KEYS if k in entry), None)
    if key is None:
        raise StudioError(
            f"{where}: no description (description or explanation) in {_short(entry)}"
        )
    return _clean(entry[key], where=where)


def _clean(text: Any, *, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise StudioError(f"{where}: description must be non-empty text, got {_short(text)}")
    return " ".join(text.split())


def _short(value: Any, n: int = 60) -> str:
    s = json.dumps(value, default=str)
    return s if len(s) <= n else s[: n - 1] + "…"


# --- labels and search -----------------------------------------------------------------------
def with_labels(summary: pd.DataFrame, *, n_tokens: int = 3) -> pd.DataFrame:
    """Add ``label``: the imported description where there is one, else the feature's top
    tokens as clustering names it (``core.clustering.feature_names``)."""
    names = feature_names(
        {int(f): list(t) for f, t in zip(summary["feature_id"], summary["tokens"], strict=True)},
        n_tokens=n_tokens,
    )
    out = summary.copy()
    tokens = [names.get(int(f), "") for f in out["feature_id"]]
    out["label"] = [
        d if isinstance(d, str) and d else t
        for d, t in zip(out["description"], tokens, strict=True)
    ]
    return out


def search_features(features: pd.DataFrame, query: str, *, limit: int = 200) -> pd.DataFrame:
    """Features whose description or any top token contains ``query`` (ignoring case), most
    frequent first; ``12`` or ``f12`` also finds feature 12 itself, placed first. An empty query
    returns the most frequent features."""
    q = query.strip().lower()
    if not q:
        return features.sort_values(["freq", "feature_id"], ascending=[False, True]).head(limit)
    m = re.fullmatch(r"f?(\d+)", q)
    by_id = features["feature_id"] == int(m.group(1)) if m else False
    desc = features["description"].fillna("").str.lower().str.contains(q, regex=False)
    toks = features["tokens"].map(lambda ts: any(q in _strip_marker(t).lower() for t in ts))
    hits = features[by_id | desc | toks].assign(_first=by_id if m else False)
    hits = hits.sort_values(["_first", "freq", "feature_id"], ascending=[False, False, True])
    return hits.drop(columns="_first").head(limit)


# --- highlighting --------------------------------------------------------------------------------
def _strip_marker(token: str) -> str:
    if token.startswith(CONTINUATION):
        return token[len(CONTINUATION) :]
    return token.lstrip("".join(WORD_START))


def token_spans(text: str, tokens: Iterable[str]) -> list[tuple[int, int]]:
    """Where token strings occur in ``text`` (ignoring case), for when no char spans were stored.
    A WordPiece continuation (``##s``) matches only inside a word; other word tokens only at the
    start of one, so ``the`` does not light up ``other``.

    >>> token_spans("the other theme", ["the"])
    [(0, 3), (10, 13)]
    """
    spans: list[tuple[int, int]] = []
    for tok in dict.fromkeys(tokens):
        piece = _strip_marker(tok).strip()
        if not piece:
            continue
        pat = re.escape(piece)
        if tok.startswith(CONTINUATION):
            pat = r"(?<=\w)" + pat
        elif piece[0].isalnum():
            pat = r"(?<!\w)" + pat
        spans.extend(m.span() for m in re.finditer(pat, text, flags=re.IGNORECASE))
    return sorted(spans)


def highlight_html(
    text: str,
    *,
    spans: Sequence[tuple[int, int, float]] = (),
    tokens: Sequence[str] = (),
    color: str = "255, 140, 0",
) -> str:
    """``text`` as escaped HTML with the firing tokens marked.

    ``spans`` are (char_start, char_end, value) of stored occurrences; where there are none,
    occurrences of ``tokens`` are marked instead. Brighter marks for larger values (relative to
    the largest); overlapping spans merge and keep the larger value. Every piece of ``text`` goes
    through ``html.escape``; only our own ``<mark>`` tags are raw HTML.

    >>> highlight_html("1 < 2", tokens=["2"])
    '1 &lt; <mark style="background: rgba(255, 140, 0, 0.85); border-radius: 3px">2</mark>'
    """
    marks = [(int(s), int(e), float(v)) for s, e, v in spans if 0 <= int(s) < int(e) <= len(text)]
    if not marks and tokens:
        marks = [(s, e, 1.0) for s, e in token_spans(text, tokens)]
    merged: list[list[float]] = []
    for s, e, v in sorted(marks):
        if merged and s < merged[-1][1]:
            last = merged[-1]
            last[1], last[2] = max(last[1], e), max(last[2], v)
        else:
            merged.append([s, e, v])
    top = max((m[2] for m in merged), default=1.0) or 1.0
    out, pos = [], 0
    for s, e, v in merged:
        s, e = int(s), int(e)
        alpha = 0.25 + 0.6 * max(0.0, v) / top
        out.append(html.escape(text[pos:s]))
        out.append(
            f'<mark style="background: rgba({color}, {alpha:.2f}); border-radius: 3px">'
            f"{html.escape(text[s:e])}</mark>"
        )
        pos = e
    out.append(html.escape(text[pos:]))
    return "".join(out)


def marks_for(
    tokens: pd.DataFrame, example_id: str
) -> tuple[list[tuple[int, int, float]], list[str]]:
    """What to mark in one example for one feature, from its top token occurrences ``tokens``
    (as Store.feature_tokens returns them): the stored char spans of the occurrences in this
    example when known; else the token strings recorded in this example, or failing that all the
    feature's top tokens, for :func:`highlight_html` to find."""
    mine = tokens[tokens["example_id"] == example_id]
    known = mine.dropna(subset=["char_start", "char_end"])
    spans = [
        (int(s), int(e), float(v))
        for s, e, v in zip(known["char_start"], known["char_end"], known["value"], strict=True)
    ]
    source = mine if not mine.empty else tokens
    return spans, list(dict.fromkeys(source["token"].tolist()))


def snippet_html(text: str, start: int, end: int, *, value: float = 1.0, width: int = 60) -> str:
    """The span [start, end) of ``text`` marked, with up to ``width`` characters of context on
    each side, as escaped HTML (an ellipsis where the text was cut).

    >>> snippet_html("x" * 100 + " sum " + "y" * 100, 101, 104, width=3)  # doctest: +ELLIPSIS
    '…xx <mark ...>sum</mark> yy…'
    """
    if not 0 <= start < end <= len(text):
        return html.escape(text[: 2 * width]) + ("…" if len(text) > 2 * width else "")
    lo, hi = max(0, start - width), min(len(text), end + width)
    body = highlight_html(text[lo:hi], spans=[(start - lo, end - lo, value)])
    return ("…" if lo > 0 else "") + body + ("…" if hi < len(text) else "")
