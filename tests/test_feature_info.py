"""Reading the features: description parsing, labels, search, and the token highlighter."""

import json

import pandas as pd
import pytest

from core.errors import StudioError
from core.feature_info import (
    highlight_html,
    marks_for,
    parse_descriptions,
    read_descriptions,
    search_features,
    snippet_html,
    token_spans,
    with_labels,
)
from core.steps.ingest import import_descriptions
from core.store import Store
from tests.store.helpers import feature_run, tables


# --- parsing ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        [{"index": 3, "description": "years"}, {"index": "12", "description": " sums  of\nmoney"}],
        {
            "explanations": [
                {"feature": 3, "explanation": "years"},
                {"featureIndex": 12, "description": "sums of money"},
            ]
        },
        {"3": "years", "12": "sums of money"},
        {"3": {"description": "years"}, "12": {"explanation": "sums of money"}},
        # Neuronpedia's export: string indices, extra fields, a second explainer for the same index
        [
            {
                "modelId": "m",
                "layer": "6-res",
                "index": "3",
                "description": "years",
                "typeName": "oai",
            },
            {"modelId": "m", "layer": "6-res", "index": "12", "description": "sums of money"},
            {"modelId": "m", "layer": "6-res", "index": "3", "description": "later take"},
        ],
    ],
)
def test_parse_the_common_shapes(data):
    assert parse_descriptions(data, source="d.json") == {3: "years", 12: "sums of money"}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("just text", r"d\.json: expected a list"),
        (
            [{"index": 1, "description": "ok"}, {"description": "no index"}],
            r"d\.json: entry 1: no feature index",
        ),
        ([{"index": "x1", "description": "a"}], r"entry 0: feature index must be a whole number"),
        ([{"index": -2, "description": "a"}], "must not be negative"),
        ([{"index": True, "description": "a"}], "whole number"),
        ([{"index": 1, "description": ""}], "non-empty text"),
        ([{"index": 1}], "no description"),
        ([3], "entry 0: expected an object"),
        ({"7": 12}, r"entry '7': expected a description"),
        ({"seven": "a"}, r"entry 'seven': feature index"),
    ],
)
def test_bad_input_names_the_file_and_entry(data, match):
    with pytest.raises(StudioError, match=match):
        parse_descriptions(data, source="d.json")


def test_read_descriptions_json_lines_and_malformed(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"index": 1, "description": "a"}\n\n{"index": 2, "description": "b"}\n')
    assert read_descriptions(jsonl) == {1: "a", 2: "b"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"index": 1, "description": "a"}\n{"index": 2,\n')
    with pytest.raises(StudioError, match=r"bad\.json line 2: malformed JSON"):
        read_descriptions(bad)
    with pytest.raises(StudioError, match="no such file"):
        read_descriptions(tmp_path / "none.json")


def test_import_checks_everything_before_writing(tmp_path):
    s = Store(tmp_path / "s.duckdb")
    s.write_dataset(name="d", kind="prompts", source="x", **tables())
    run = feature_run(s)  # d_sae 16
    good = tmp_path / "np.json"
    good.write_text(json.dumps({"explanations": [{"index": "7", "description": "prompt words"}]}))
    assert import_descriptions(s, run_id=None, dataset="d", path=good) == 1
    too_wide = tmp_path / "other.json"
    too_wide.write_text(json.dumps({"3": "x", "99": "y"}))
    with pytest.raises(StudioError, match="feature index 99 is outside the SAE of run"):
        import_descriptions(s, run_id=run, dataset=None, path=too_wide)
    table = s.feature_summary(run).set_index("feature_id")
    assert table["description"].dropna().to_dict() == {7: "prompt words"}  # unchanged
    with pytest.raises(StudioError, match="no dataset 'nope'"):
        import_descriptions(s, run_id=None, dataset="nope", path=good)
    with pytest.raises(StudioError, match="--run"):
        import_descriptions(s, run_id=None, dataset=None, path=good)


# --- labels and search ----------------------------------------------------------------------------
def _features() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "feature_id": [1, 2, 12, 40],
            "freq": [0.1, 0.5, 0.2, 0.3],
            "tokens": [["sum", "total", "add", "plus"], ["##ing"], [], ["the"]],
            "description": [None, None, "Money amounts", None],
        }
    )


def test_labels_prefer_descriptions_then_top_tokens():
    labels = with_labels(_features())["label"].tolist()
    assert labels == ["sum total add", "##ing", "Money amounts", "the"]


def test_search_by_description_token_or_id():
    f = with_labels(_features())
    assert search_features(f, "money")["feature_id"].tolist() == [12]
    assert search_features(f, "TOTAL")["feature_id"].tolist() == [1]
    assert search_features(f, "ing")["feature_id"].tolist() == [2]  # the ## marker is ignored
    assert search_features(f, "f12")["feature_id"].tolist() == [12]
    assert search_features(f, "")["feature_id"].tolist() == [2, 40, 12, 1]  # most frequent first
    assert search_features(f, "zzz").empty


# --- highlighting ----------------------------------------------------------------------------------
def test_highlight_escapes_user_text_and_marks_spans():
    text = '<script>alert("x")</script> total'
    out = highlight_html(text, spans=[(28, 33, 2.0)])
    assert "<script>" not in out and "&lt;script&gt;" in out and "&quot;x&quot;" in out
    assert out.count("<mark") == 1 and ">total</mark>" in out


def test_highlight_escapes_inside_a_mark_and_merges_overlaps():
    out = highlight_html("a <b> c", spans=[(2, 4, 1.0), (3, 5, 3.0)])
    assert out.count("<mark") == 1
    assert "&lt;b&gt;</mark>" in out and "0.85" in out  # merged span keeps the larger value


def test_highlight_falls_back_to_token_strings_and_ignores_bad_spans():
    out = highlight_html("The theme of the other", spans=[(50, 60, 1.0)], tokens=["the"])
    assert out.count("<mark") == 3  # "The", the start of "theme", "the"; not inside "other"
    assert "o<mark" not in out
    assert token_spans("walking talks", ["##ing", "##s"]) == [(4, 7), (12, 13)]
    assert token_spans("Hello, hello", ["ĠHello"]) == [(0, 5), (7, 12)]
    assert token_spans("a hello", ["Ġhello", "", "##"]) == [(2, 7)]


def test_marks_for_uses_spans_then_the_examples_tokens_then_all():
    occ = pd.DataFrame(
        {
            "example_id": ["e1", "e1", "e2"],
            "token": ["sum", "add", "plus"],
            "value": [2.0, 1.0, 0.5],
            "char_start": [0, None, None],
            "char_end": [3, None, None],
        }
    )
    assert marks_for(occ, "e1") == ([(0, 3, 2.0)], ["sum", "add"])
    assert marks_for(occ, "e2") == ([], ["plus"])
    assert marks_for(occ, "e9") == ([], ["sum", "add", "plus"])


def test_snippet_marks_the_span_in_escaped_context():
    text = "<i>" + "x" * 50 + " sum " + "y" * 50
    out = snippet_html(text, 54, 57, width=5)
    assert out.startswith("…") and out.endswith("…") and ">sum</mark>" in out
    assert "<i>" not in out
    assert snippet_html("a < b", 0, 99).startswith("a &lt; b")  # bad span: escaped text, no mark
