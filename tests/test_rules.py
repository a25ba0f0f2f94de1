"""Rule sets: parsing and validation, byte-stable saves, the removed view (per rule, per cluster,
per difficulty band), the difficulty column; then the CLI (`rules`, `export --rules`) and the
rule-set panel on the pipeline database."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import StudioError
from core.filters import Filter, parse_rule_where, where_text
from core.rules import (
    NO_VALUE,
    Rule,
    RuleSet,
    band_counts,
    check_rule_set,
    difficulty_bands,
    difficulty_column,
    feature_identity,
    hit_names,
    intersect_ids,
    load_rule_set,
    removal_report,
    rule_set_bytes,
    rule_set_path,
    save_rule_set,
)
from core.steps.rules import RemovedViewRequest, removed_view
from core.store import Store
from tests.conftest import run_cli
from tests.ui.test_app_safety import seen

SAE = {"model": "m", "layer": 3, "hook": "blocks.3.hook_resid_post", "sae": "s", "d_sae": 64}


def _set(**extra) -> dict:
    return {
        "name": "math-clean",
        "description": "keep good maths",
        "rules": [
            {"action": "keep", "where": "quality_proxy>=0.4", "note": "quality"},
            {"action": "drop", "where": "feature:12>0.5", "note": "code-block feature"},
            {"action": "drop", "where": "is_duplicate=1"},
            {"action": "keep", "ids": ["e1", "e2", "e3"]},
            {"action": "drop", "where": "cluster in 3,5"},
        ],
        "feature_run": SAE,
        "version": 1,
        **extra,
    }


# --- parsing and files -------------------------------------------------------------------------
def test_rule_set_gives_filters_and_ids_in_rule_order():
    rs = RuleSet.from_dict(_set())
    assert rs.filters() == [
        Filter("quality_proxy", ">=", 0.4),
        Filter("feature:12", ">", 0.5, action="drop"),
        Filter("is_duplicate", "=", 1.0, action="drop"),
        Filter("cluster", "in", [3.0, 5.0], action="drop"),
    ]
    assert rs.ids() == ["e1", "e2", "e3"]
    assert rs.hit_names() == [
        "1: quality_proxy>=0.4",
        "2: drop feature:12>0.5",
        "3: drop is_duplicate=1",
        "5: drop cluster in 3,5",
        "selection",
    ]
    assert rs.has_feature_rules()
    assert RuleSet.from_dict(rs.to_dict()) == rs
    # two keep-ids rules allow only what both list; a drop-ids rule is a filter on id
    two = RuleSet("x", (Rule("keep", ids=("a", "b")), Rule("keep", ids=("b", "c"))))
    assert two.ids() == ["b"]
    drop = RuleSet("x", (Rule("drop", ids=("a",)),))
    assert drop.filters() == [Filter("id", "in", ["a"], action="drop")] and drop.ids() is None
    assert drop.hit_names() == ["1: drop 1 listed ids"]


def test_feature_where_parses_and_the_rest_goes_to_parse_where():
    assert parse_rule_where("feature:12 >= 0.25") == Filter("feature:12", ">=", 0.25)
    assert parse_rule_where("feature:7==0") == Filter("feature:7", "=", 0.0)
    assert parse_rule_where("task=leg_counting") == Filter("task", "=", "leg_counting")
    with pytest.raises(StudioError, match="expected feature:N"):
        parse_rule_where("feature:x>1")
    with pytest.raises(StudioError, match="must be a number"):
        parse_rule_where("feature:3>high")
    with pytest.raises(StudioError, match="feature:N<op>T"):
        parse_rule_where("feature:3 in 1,2")
    # a filter written as a rule parses back to itself
    for f in (
        Filter("cluster", "in", [3.0, 5.0], action="drop"),
        Filter("quality", ">=", 0.1 + 0.2),
        Filter("task", "not in", ["a", "b"]),
        Filter("feature:4", "<", 2.0),
    ):
        back = parse_rule_where(where_text(f))
        assert (back.column, back.op, back.value) == (f.column, f.op, f.value)
    assert where_text(Filter("difficulty", "<=", 3.0)) == "difficulty<=3"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"rules": [}', r"bad\.json: line 1 column 12: invalid JSON"),
        ('{"name": "x",\n "rules": [\n{"action": "keep" "where": "a>1"}]}', r"line 3 column"),
        ('{"rules": [{"action": "remove", "where": "a>1"}]}', r"rule 1: action: expected keep"),
        ('{"rules": [{"action": "keep"}, {"action": "drop"}]}', r"rule 1: where: missing"),
        (
            '{"rules": [{"action": "keep", "where": "a>1"}, {"action": "drop", "where": "a"}]}',
            r"rule 2: where: 'a': expected COLUMN<op>VALUE",
        ),
        ('{"rules": [{"action": "drop", "where": "feature:1x>0"}]}', r"rule 1: where: .*feature"),
        ('{"rules": [{"action": "keep", "wehre": "a>1"}]}', r"rule 1: unknown field 'wehre'"),
        ('{"rules": [{"action": "keep", "ids": [1, 2]}]}', r"rule 1: ids: expected a list"),
        ('{"rules": {"action": "keep"}}', r"bad\.json: rules: expected a list"),
        ('{"rules": [], "version": 7}', r"version 7 is newer"),
        ("[1, 2]", r"bad\.json: expected a JSON object"),
    ],
)
def test_load_errors_name_the_file_the_rule_and_the_field(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(StudioError, match=match) as info:
        load_rule_set(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(StudioError, match=r"rule set .*none\.json"):
        load_rule_set(tmp_path / "none.json")


def test_save_load_round_trip_is_byte_stable(tmp_path):
    rs = RuleSet.from_dict(_set())
    path = save_rule_set(tmp_path / "rules" / "math.json", rs)
    first = path.read_bytes()
    again = load_rule_set(path)
    assert again == rs
    save_rule_set(path, again)
    assert path.read_bytes() == first == rule_set_bytes(rs)
    data = json.loads(first)
    assert list(data) == sorted(data)  # sorted keys
    assert first.endswith(b"\n") and not list(path.parent.glob(".*tmp"))  # no temp left behind
    # a file without a name takes the file's stem
    (tmp_path / "nameless.json").write_text('{"rules": [{"action": "keep", "where": "a>1"}]}')
    assert load_rule_set(tmp_path / "nameless.json").name == "nameless"
    assert rule_set_path(tmp_path, "my rules/v2").name == "my-rules-v2.json"
    with pytest.raises(StudioError, match="rule set name"):
        rule_set_path(tmp_path, " / ")


# --- reapplying to another dataset --------------------------------------------------------------
def test_check_rule_set_names_the_rule_that_cannot_apply():
    rs = RuleSet.from_dict(_set())
    cols = {"quality_proxy", "is_duplicate", "cluster", "id"}
    ids = ["e1", "e2", "e9"]
    warnings = check_rule_set(rs, columns=cols, feature_run_config=SAE, example_ids=ids)
    assert warnings == ["rule 4 (keep 3 listed ids): 1 of 3 ids are not in this dataset"]
    with pytest.raises(StudioError, match=r"^rule 1 \(keep quality_proxy>=0.4\): .*no column"):
        check_rule_set(rs, columns=cols - {"quality_proxy"}, feature_run_config=SAE)
    with pytest.raises(StudioError, match=r"rule 3 .*'is_duplicate' \(and 1 more\)"):
        check_rule_set(rs, columns={"quality_proxy"}, feature_run_config=SAE)
    other = {**SAE, "sae": "another-sae"}
    with pytest.raises(StudioError, match=r"rule 2 .*only meaningful for the same SAE"):
        check_rule_set(rs, columns=cols, feature_run_config=other)
    with pytest.raises(StudioError, match=r"rule 2 .*no feature run"):
        check_rule_set(rs, columns=cols, feature_run_config=None)
    # no recorded SAE: the index is still checked against the dataset's SAE size ...
    loose = RuleSet.from_dict(_set(feature_run=None))
    with pytest.raises(StudioError, match=r"feature 12 is out of range for an SAE of 8"):
        check_rule_set(loose, columns=cols, feature_run_config={**SAE, "d_sae": 8})
    # ... and otherwise a warning, not an error
    (w,) = check_rule_set(loose, columns=cols, feature_run_config=SAE)
    assert w.startswith("rule 2") and "does not record its SAE" in w


def test_feature_identity_is_the_run_config_and_its_size():
    run = {
        "config": {**SAE, "d_sae": None, "pooling": "max", "top_k": 64},
        "summary": {"d_sae": 64},
    }
    assert feature_identity(run) == SAE


def test_intersect_ids():
    assert intersect_ids(None, None) is None
    assert intersect_ids(["a", "b"], None) == ["a", "b"]
    assert intersect_ids(None, ["b"]) == ["b"]
    assert intersect_ids(["c", "a", "b"], ["b", "c"]) == ["c", "b"]


# --- difficulty -----------------------------------------------------------------------------------
def test_difficulty_column_preference_order():
    assert difficulty_column(["difficulty", "pass_rate"], {"d_proxy": "harder"}, None) == (
        "difficulty",
        "harder",
    )
    assert difficulty_column(["pass_rate"], {"d_proxy": "easier"}, None) == ("d_proxy", "easier")
    assert difficulty_column(["pass_at_4", "pass_rate", "q"], {}, None) == ("pass_rate", "easier")
    assert difficulty_column(["pass_at_4", "q"], {}, None) == ("pass_at_4", "easier")
    assert difficulty_column(["q"], {}, None) == (None, None)
    assert difficulty_column(["q", "pass_rate"], {}, "q") == ("q", "harder")
    assert difficulty_column(["q", "pass_rate"], {}, "pass_rate") == ("pass_rate", "easier")
    assert difficulty_column([], {"d": "easier"}, "d") == ("d", "easier")
    assert difficulty_column([], {}, "quality_proxy", others={"quality_proxy"}) == (
        "quality_proxy",
        "harder",
    )
    with pytest.raises(StudioError, match=r"'nope' is not a label or score.*known: d, q"):
        difficulty_column(["q"], {"d": "harder"}, "nope")


def test_value_bands_follow_the_direction():
    b = difficulty_bands(np.array([3.0, 1, 2, np.nan, 2]), higher_is="harder")
    assert b.names == ("1", "2", "3") and b.order() == ["1", "2", "3", NO_VALUE]
    assert b.assign(np.array([2.0, np.nan, 1])).tolist() == ["2", NO_VALUE, "1"]
    e = difficulty_bands(np.array([0.0, 0.25, 1.0, 0.25]), higher_is="easier")
    assert e.names == ("1", "0.25", "0")  # the easiest (highest pass rate) first
    with pytest.raises(StudioError, match="higher_is"):
        difficulty_bands(np.array([1.0]), higher_is="better")


def test_quartile_bands_record_edges_and_flip_for_easier():
    x = np.arange(1.0, 101.0)  # 100 distinct values: quartiles
    b = difficulty_bands(x, higher_is="harder")
    assert b.edges == pytest.approx((1.0, 25.75, 50.5, 75.25, 100.0))
    assert b.names[0].startswith("1 easiest: 1–25.8") and b.names[3].startswith("4 hardest")
    got = b.assign(np.array([1.0, 25.75, 50.0, 100.0, np.nan]))
    assert got.tolist() == [b.names[0], b.names[1], b.names[1], b.names[3], NO_VALUE]
    e = difficulty_bands(x, higher_is="easier")
    assert e.names[0].startswith("1 easiest: 75.2–100")  # high pass rate = easy
    assert e.assign(np.array([100.0, 1.0])).tolist() == [e.names[0], e.names[3]]
    counts = band_counts(np.array([1.0, 2, 99, np.nan]), reference=x, higher_is="harder")
    assert list(counts.values()) == [2, 0, 0, 1, 1] and list(counts)[-1] == NO_VALUE


# --- the removed view --------------------------------------------------------------------------
def _hits() -> pd.DataFrame:
    """Six rows, two clusters (and one without), three rules and a selection."""
    return pd.DataFrame(
        {
            "id": [f"e{i}" for i in range(6)],
            "cluster": [0, 0, 1, 1, 1, None],
            "difficulty": [1.0, 2.0, 3.0, np.nan, 1.0, 2.0],
            "r0": [True, True, False, False, False, False],
            "r1": [True, False, True, False, False, False],
            "r2": [False, False, True, False, False, False],
            "r_sel": [False, False, False, False, True, False],
        }
    )


def test_removal_report_counts_own_first_and_only():
    names = ["1: a", "2: b", "3: c", "selection"]
    rep = removal_report(_hits(), names, difficulty="difficulty", higher_is="harder")
    per_rule = rep.per_rule.set_index("rule")
    assert per_rule["removes"].tolist() == [2, 2, 1, 1]
    assert per_rule["first"].tolist() == [2, 1, 0, 1]  # rule 2's e0 was rule 1's already
    assert per_rule["only"].tolist() == [1, 0, 0, 1]  # e2 is removed by rules 2 and 3
    assert (rep.total, rep.kept) == (6, 2)
    why = dict(zip(rep.rows["id"], rep.rows["why"], strict=True))
    assert why["e0"] == ["1: a", "2: b"] and why["e2"] == ["2: b", "3: c"]
    assert why["e3"] == [] and why["e4"] == ["selection"]
    removed = rep.removed_rows()
    assert removed["id"].tolist() == ["e0", "e1", "e2", "e4"]
    assert removed["why"].tolist()[0] == "1: a; 2: b"
    cl = rep.per_cluster.set_index("cluster")
    assert cl.index.tolist() == [-1, 0, 1]  # -1: no cluster
    assert cl.loc[0].tolist()[:3] == [2, 0, 2] and cl.loc[1].tolist()[:3] == [3, 1, 2]
    assert cl.loc[1, "kept_share"] == pytest.approx(1 / 3)
    bands = rep.per_band
    assert bands["band"].tolist() == ["1", "2", "3", NO_VALUE]  # NaN is its own band, last
    assert bands[["total", "kept", "removed"]].to_numpy().tolist() == [
        [2, 0, 2],
        [2, 1, 1],
        [1, 0, 1],
        [1, 1, 0],
    ]


def test_removal_report_easier_direction_and_no_rules():
    hits = _hits().drop(columns=["r0", "r1", "r2", "r_sel"])
    rep = removal_report(hits, [], difficulty="difficulty", higher_is="easier")
    assert rep.per_band["band"].tolist() == ["3", "2", "1", NO_VALUE]
    assert rep.kept == 6 and rep.per_rule.empty
    plain = removal_report(hits.drop(columns=["difficulty"]), [], difficulty=None, higher_is=None)
    assert plain.bands is None and plain.per_band.empty
    with pytest.raises(ValueError, match="rule names"):
        removal_report(_hits(), ["only one"], difficulty=None, higher_is=None)


def test_hit_names_number_the_filters():
    fs = [
        Filter("a", ">", 1.5),
        Filter("cluster", "in", [2.0], action="drop"),
        Filter("id", "in", [f"e{i}" for i in range(7)], action="drop"),
    ]
    assert hit_names(fs, selection=True) == [
        "1: a>1.5",
        "2: drop cluster in 2",
        "3: drop id in e0,e1,e2,e3,e4,… (7 values)",
        "selection",
    ]


# --- the CLI on the pipeline database ------------------------------------------------------------
@pytest.fixture
def db(pipeline_db: Path, tmp_path: Path) -> Path:
    """A private copy of the session's pipeline database, free to write to."""
    copy = tmp_path / "studio.duckdb"
    shutil.copy(pipeline_db, copy)
    return copy


def _demo_rule_set(db: Path) -> tuple[RuleSet, pd.DataFrame]:
    """A rule set with a score threshold, a feature rule, a cluster drop and dedup, and the
    wide columns to check it by hand."""
    s = Store(db)
    views = s.views("demo")
    assert views.feature_run is not None
    summary = s.feature_summary(views.feature_run)
    fid = int(summary.sort_values(["n_topk", "feature_id"], ascending=[False, True]).iloc[0, 0])
    t = float(np.median(s.feature_activations(views.feature_run, fid)))
    cols = ["id", "quality_proxy", "cluster", "is_duplicate", f"feature:{fid}"]
    wide = s.wide("demo", views=views, columns=cols).to_pandas()
    q = float(np.quantile(wide["quality_proxy"], 0.2))
    rs = RuleSet(
        "demo-clean",
        (
            Rule("keep", where=f"quality_proxy>={q!r}", note="quality probe"),
            Rule("drop", where=f"feature:{fid}>{t!r}", note="a frequent feature"),
            Rule("drop", where="cluster in 0"),
            Rule("drop", where="is_duplicate=1", note="one per near-duplicate group"),
        ),
        feature_run=feature_identity(s.run(views.feature_run)),
    )
    keep = (
        (wide["quality_proxy"] >= q)
        & ~(wide[f"feature:{fid}"] > t)
        & (wide["cluster"] != 0)
        & (wide["is_duplicate"] != 1)
    )
    return rs, wide[keep]


@pytest.mark.slow
def test_rules_command_and_export_agree(db, tmp_path, capsys):
    rs, expected = _demo_rule_set(db)
    path = save_rule_set(tmp_path / "rules" / "demo-clean.json", rs)
    assert run_cli("rules", str(path), "--dataset", "demo", "--db", str(db)) == 0
    printed = capsys.readouterr().out
    kept = int(re.search(r"kept (\d+) of 200 rows", printed).group(1))  # type: ignore[union-attr]
    assert kept == len(expected) and 0 < kept < 150
    for heading in ("per rule", "per cluster", "per difficulty band (difficulty, higher = harder"):
        assert heading in printed
    assert "2: drop feature:" in printed and "Removed rows and why" in printed
    # the same numbers through the library: every rule removes something
    s = Store(db)
    views = s.views("demo")
    names = rs.hit_names()
    req = RemovedViewRequest("demo", views=views, filters=rs.filters(), ids=None, names=names)
    report = removed_view(s, req)
    assert report.kept == kept and bool((report.per_rule["removes"] > 0).all())
    assert report.per_cluster.set_index("cluster").loc[0, "kept"] == 0
    assert int(report.per_band["kept"].sum()) == kept
    # export --rules writes exactly the rows the removed view says remain
    out = tmp_path / "clean.jsonl"
    assert (
        run_cli(
            "export", "--dataset", "demo", "--rules", str(path), "--out", str(out), "--db", str(db)
        )
        == 0
    )
    rows = pd.read_json(out, lines=True)
    assert len(rows) == kept and sorted(rows["id"]) == sorted(expected["id"])
    assert 0 not in set(rows["cluster"]) and set(rows["is_duplicate"]) == {0}
    # the same rules as --where / --drop on the command line write the same rows
    flags = [(f"--{'where' if r.action == 'keep' else 'drop'}", str(r.where)) for r in rs.rules]
    same = tmp_path / "same.jsonl"
    args = [a for flag in flags for a in flag]
    assert run_cli("export", "--dataset", "demo", *args, "--out", str(same), "--db", str(db)) == 0
    assert pd.read_json(same, lines=True)["id"].tolist() == rows["id"].tolist()
    # --where and --ids AND with the rule set
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join([*expected["id"].tolist()[:5], "demo-99999"]))
    args = ["--rules", str(path), "--ids", str(ids_file), "--where", "difficulty>=0"]
    assert run_cli("export", "--dataset", "demo", *args, "--out", str(out), "--db", str(db)) == 0
    assert len(pd.read_json(out, lines=True)) == 5


@pytest.mark.slow
def test_a_rule_set_on_a_dataset_without_its_column_fails_in_one_line(db, tmp_path, capsys):
    rs, _ = _demo_rule_set(db)
    path = save_rule_set(tmp_path / "demo-clean.json", rs)
    data = tmp_path / "other.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"q {i}", "answer": str(i)}) + "\n" for i in range(5))
    )
    assert (
        run_cli("ingest", str(data), "--dataset", "other", "--kind", "prompts", "--db", str(db))
        == 0
    )
    capsys.readouterr()
    for cmd in (
        ["rules", str(path)],
        ["export", "--rules", str(path), "--out", str(tmp_path / "o.jsonl")],
    ):
        assert run_cli(*cmd, "--dataset", "other", "--db", str(db)) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
        assert (
            err.startswith("error: rule 1 (keep quality_proxy>=")
            and "no column 'quality_proxy'" in err
        )
    assert not (tmp_path / "o.jsonl").exists()
    # the same rules recorded for another SAE: the feature rule is refused on demo
    other = RuleSet(rs.name, rs.rules, feature_run={**(rs.feature_run or {}), "sae": "another"})
    save_rule_set(path, other)
    assert run_cli("rules", str(path), "--dataset", "demo", "--db", str(db)) == 2
    err = capsys.readouterr().err
    assert "rule 2 (drop feature:" in err and "only meaningful for the same SAE" in err


def test_cli_export_choices_follow_core_export():
    from core import cli
    from core.export import FORMATS, ORDERS

    assert cli.EXPORT_ORDERS == ORDERS and cli.EXPORT_FORMATS == FORMATS
    args = cli.build_parser().parse_args(
        ["export", "--dataset", "d", "--out", "o", "--rules", "r.json"]
    )
    assert args.rules == "r.json" and args.difficulty_column is None and args.to is None


# --- the rule-set panel under AppTest -------------------------------------------------------------
def _panel_script(db: str, rules_dir: str) -> None:
    """A page with the quick dedup widget and the rule-set panel, publishing what it returns."""
    from pathlib import Path

    import streamlit as st

    from core.filters import Filter
    from core.store import Store
    from ui.common import PageContext
    from ui.rules_panel import rule_set_panel

    s = Store(db)
    ctx = PageContext("demo", db, s.version_token(), s.views("demo"))
    dedup = st.checkbox("dedup", key="t_dedup")
    quick = [Filter("is_duplicate", "=", 1, action="drop")] if dedup else []
    request = rule_set_panel(ctx, quick, rules_dir=Path(rules_dir))
    filters, ids = request.kept_filters(), request.kept_ids()
    name = request.rule_set.name if request.rule_set else None
    st.session_state["t_out"] = ([f.describe() for f in filters], ids, name)
    st.session_state["t_count"] = s.count("demo", views=ctx.views, filters=filters, ids=ids)


def _metric(at, label: str) -> int:
    return int(next(m.value for m in at.metric if m.label == label).replace(",", ""))


@pytest.mark.slow
def test_rule_set_panel_loads_adds_feature_rules_saves_and_explains(pipeline_db, tmp_path):
    from streamlit.testing.v1 import AppTest

    rules_dir = tmp_path / "rules"
    rs, expected = _demo_rule_set(pipeline_db)
    save_rule_set(rules_dir / "demo-clean.json", rs)
    (rules_dir / "broken.json").write_text('{"rules": [{"action": "keep", "where": "nope"}]}')
    at = AppTest.from_function(_panel_script, args=(str(pipeline_db), str(rules_dir)))
    at.default_timeout = 60
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert _metric(at, "Kept by the rules") == 200 and at.session_state["t_out"] == ([], None, None)

    at.selectbox(key="rules_file").select("demo-clean.json").run()
    assert not at.exception and not at.error
    kept = _metric(at, "Kept by the rules")
    assert kept == len(expected) == at.session_state["t_count"]
    described, ids, name = at.session_state["t_out"]
    assert name == "demo-clean" and ids is None and len(described) == 4
    per_rule = next(d.value for d in at.dataframe if "first" in d.value.columns)
    assert per_rule["source"].tolist()[0] == "rule set: quality probe"
    assert any(e.label.startswith(f"Removed rows and why ({200 - kept:,})") for e in at.expander)

    # a feature rule from the editor: drop the rows where another feature fires
    s = Store(pipeline_db)
    views = s.views("demo")
    assert views.feature_run is not None
    summary = s.feature_summary(views.feature_run)
    fid = int(summary[summary["n_topk"] > 0].sort_values("n_topk").iloc[-2]["feature_id"])
    at.number_input(key="rules_feat_id").set_value(fid)
    at.selectbox(key="rules_feat_op").select(">")
    at.radio(key="rules_feat_action").set_value("drop")
    at.button(key="rules_feat_add").click().run()
    assert not at.exception
    described, _, _ = at.session_state["t_out"]
    assert described[-1] == f"drop feature:{fid}>0.0"  # Filter.describe
    fewer = _metric(at, "Kept by the rules")
    assert fewer == at.session_state["t_count"] < kept
    # with the dedup widget on as well (already a rule of the set: nothing changes)
    at.checkbox(key="t_dedup").check().run()
    assert _metric(at, "Kept by the rules") == fewer

    # save the combined rules under a new name and load them back
    at.text_input(key="rules_save_name").set_value("mine").run()
    at.button(key="rules_save").click().run()
    assert not at.exception and not at.error
    saved = load_rule_set(rules_dir / "mine.json")
    assert [r.where for r in saved.rules][-2:] == ["is_duplicate=1", f"feature:{fid}>0"]
    assert saved.feature_run == rs.feature_run and len(saved.rules) == 6
    assert any("mine.json" in str(m.value) for m in at.success)

    # a file that cannot apply: one line, the page goes on without it
    at.selectbox(key="rules_file").select("broken.json").run()
    assert not at.exception
    assert len(at.error) == 1 and "broken.json: rule 1: where" in seen(at.error[0].value)
    assert _metric(at, "Kept by the rules") == at.session_state["t_count"]
