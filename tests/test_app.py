"""Every page under AppTest, on the pipeline database: no exception, the right elements drawn."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")

pytestmark = pytest.mark.slow


@pytest.fixture
def app(pipeline_db, monkeypatch):
    monkeypatch.setenv("SAERL_DB", str(pipeline_db))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    return at


def _frame(at: AppTest, column: str):
    """The first dataframe with that column (plain dataframes keep no key in AppTest)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_overview(app):
    _ok(app)
    assert app.title[0].value == "SAERL Studio"
    assert len(app.dataframe) >= 2  # datasets, feature runs
    datasets = app.dataframe[0].value
    assert list(datasets["name"]) == ["demo"] and int(datasets["examples"][0]) == 200


def test_map(app):
    app.switch_page("pages/map.py").run()
    _ok(app)
    assert app.get("plotly_chart"), "the map chart is drawn"
    assert any("Features: run" in c.value for c in app.caption)
    for colour in ("difficulty", "task"):
        app.selectbox(key="map_color").select(colour).run()
        _ok(app)


def test_export_counts_follow_filters(app):
    app.switch_page("pages/export.py").run()
    _ok(app)
    total = app.metric[0].value
    assert total.replace(",", "") == "200"
    app.slider(key="exp_range_quality").set_value((1.0, 1.0)).run()
    _ok(app)
    kept = int(app.metric[0].value.replace(",", ""))
    assert 150 < kept < 200  # the corrupted items are gone
    assert int(app.metric[1].value.replace(",", "")) == 200 - kept
    app.multiselect(key="exp_tag_corruption").select("truncated").run()
    _ok(app)
    assert int(app.metric[0].value.replace(",", "")) == 0  # truncated items all have quality 0


def test_missing_database_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("SAERL_DB", str(tmp_path / "none.duckdb"))
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    assert not at.exception
    assert "does not exist" in at.error[0].value


def test_map_opens_the_selection_in_features(app):
    app.switch_page("pages/map.py").run()
    _ok(app)
    assert not any(b.key == "map_open_features" for b in app.button)  # nothing selected yet
    ids = app.session_state["selection"].get("demo", [])
    assert ids == []
    app.session_state["selection"] = {"demo": ["demo-00003", "demo-00007"]}
    app.run()
    app.button(key="map_open_features").click().run()
    _ok(app)
    assert app.title[0].value == "Features"
    assert app.session_state["open_example"] == {"demo": "demo-00003"}
    assert any("Example demo" in m.value for m in app.markdown)
    assert app.selectbox(key="feat_map_pick").options[:2] == ["demo-00003", "demo-00007"]


def test_features_search_open_feature_and_example(app):
    app.switch_page("pages/features.py").run()
    _ok(app)
    assert app.title[0].value == "Features"
    assert any("stored top-k per example" in c.value for c in app.caption)
    top = app.dataframe[0].value
    assert len(top) > 0 and top["freq"].is_monotonic_decreasing
    fid = int(top["feature_id"].iloc[0])
    app.text_input(key="feat_query").input(f"f{fid}").run()
    _ok(app)
    assert int(app.dataframe[0].value["feature_id"].iloc[0]) == fid
    # open it (a row pick does this; AppTest cannot click table rows, so the deep link does)
    app.query_params["feature"] = str(fid)
    app.run()
    _ok(app)
    assert any(m.value == f"#### Feature {fid}" for m in app.markdown)
    assert [m.label for m in app.metric] == [
        "Frequency",
        "Fires in",
        "Mean activation",
        "Max activation",
    ]
    assert app.get("plotly_chart"), "the activation histogram is drawn"
    top_examples = [h.value for h in app.get("html")]
    opens = [b for b in app.button if b.key and b.key.startswith("feat_open_ex_")]
    assert opens, "top examples each have an Open button"
    opens[0].click().run()
    _ok(app)
    eid = app.session_state["open_example"]["demo"]
    assert any(f"<b>{eid}</b>" in h for h in top_examples)
    assert any(m.value.startswith("#### Example ") for m in app.markdown)
    feats = app.dataframe(key="ex_features").value
    assert fid in set(feats["feature_id"])  # the example holds the feature it came from
    # find an example by text, then send the feature's top examples to the Map
    app.text_input(key="ex_query").input("the").run()
    _ok(app)
    assert len(app.dataframe(key="ex_results").value) > 0
    app.button(key="feat_to_map").click().run()
    _ok(app)
    assert app.title[0].value == "Map"
    assert len(app.session_state["selection"]["demo"]) >= 1


def test_clusters_page_without_and_with_sweep_and_dedup(app, pipeline_db, tmp_path, monkeypatch):
    import shutil

    from tests.conftest import run_cli

    app.switch_page("pages/clusters.py").run()
    _ok(app)
    assert app.metric[0].value == "4"  # pipeline_db: --k 4, no sweep, a dedup run
    assert app.metric[2].value != "–"
    assert any("--sweep auto" in i.value for i in app.info)
    evidence = _frame(app, "NMI vs task")
    assert len(evidence) == 3 and "NMI vs task" in evidence.columns
    table = app.dataframe(key="clusters_table").value
    assert int(table["size"].sum()) == 200
    assert {"mean_difficulty", "mean_quality"} <= set(table.columns)
    assert app.get("plotly_chart"), "the cluster's map is drawn"
    app.selectbox(key="clusters_pick").select(2).run()
    _ok(app)
    shown = _frame(app, "difficulty")
    assert len(shown) == int(table.loc[table["cluster"] == 2, "size"].iloc[0])

    db = tmp_path / "copy.duckdb"
    shutil.copy(pipeline_db, db)
    assert run_cli("cluster", "--dataset", "demo", "--sweep", "2,3,4", "--db", str(db)) == 0
    monkeypatch.setenv("SAERL_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/clusters.py").run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 2  # the sweep and the cluster's map
    assert "n_duplicates" in at.dataframe(key="clusters_table").value.columns


def test_difficulty_page_shows_evidence_and_rollouts(app):
    app.switch_page("pages/difficulty.py").run()
    _ok(app)
    labels = [m.label for m in app.metric]
    assert "R² (cross-validated)" in labels and "Zero-signal prompts" in labels
    evidence = _frame(app, "representation")
    assert len(evidence) == 3  # SAE, dense, TF-IDF
    # histogram, proxy-vs-label scatter, per-cluster box, zero-signal share per cluster
    assert len(app.get("plotly_chart")) == 4
    zero = _frame(app, "n_rollouts")
    assert len(zero) > 0 and set(zero["pass_rate"]) <= {0.0, 1.0}
    assert any("SIMULATED" in c.value.upper() for c in app.caption)


def test_quality_threshold_lists_what_it_removes(app):
    app.switch_page("pages/quality.py").run()
    _ok(app)
    assert "AUC" in [m.label for m in app.metric]
    slider = next(s for s in app.slider if s.key and s.key.startswith("quality_threshold"))
    counts = []
    for t in (0.3, 0.7):
        slider.set_value(t).run()
        _ok(app)
        removed = _frame(app, "score")
        assert int(app.metric[4].value.replace(",", "")) == len(removed)
        assert bool((removed["score"] < t).all())
        counts.append(len(removed))
    assert counts[0] <= counts[1]


def test_export_batches_preview(app):
    app.switch_page("pages/export.py").run()
    _ok(app)
    app.number_input(key="exp_batch").set_value(20).run()
    _ok(app)
    share = next(m for m in app.metric if m.label == "Rows from other clusters").value
    assert 10.0 <= float(share.rstrip("%")) <= 35.0  # mix 0.2 by default
    first = next(d.value for d in app.dataframe if len(d.value) == 5)
    assert (first.sum(axis=1) == 20).all()  # five full batches of 20
