"""Every page under AppTest, on the pipeline database: no exception, the right elements drawn."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.store import REWARD_STEP, RunRecord

APP = str(Path(__file__).resolve().parents[2] / "app.py")
# AppTest's limit for one script run: generous, as a loaded machine is slow, not wrong; the
# tests assert what the pages show, never how fast
TIMEOUT_S = 600

pytestmark = pytest.mark.slow


@pytest.fixture
def app(pipeline_db, monkeypatch):
    monkeypatch.setenv("SAERL_DB", str(pipeline_db))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
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
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
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
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
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


# --- the Rewards page, on the rewards store (preference set `prefs`) --------------------------------
REWARDS_PAGE = "pages/rewards.py"


def _rewards_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    at.switch_page(REWARDS_PAGE).run()
    return at


@pytest.fixture
def rewards_app(rewards_db, monkeypatch):
    monkeypatch.setenv("SAERL_DB", str(rewards_db))
    return _rewards_page()


def _reward_scores(db, dataset: str, name: str):
    """A source's scores read from the store directly, as core.rewards takes them."""
    from core.store import Store

    s = Store(db)
    scores = s.reward_scores(s.reward_runs(dataset)[name]).to_pandas()
    return scores.rename(columns={"value": "score"})[
        ["example_id", "response_idx", "role", "score"]
    ]


def _figures(at: AppTest) -> dict[str, dict]:
    """The page's Plotly figures by their layout meta (the charts that set one)."""
    import json

    specs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    return {s["layout"]["meta"]: s for s in specs if s["layout"].get("meta")}


def _n(values) -> int:
    """Length of a trace's data array (Plotly writes numpy arrays as base64 typed arrays)."""
    import base64

    import numpy as np

    if isinstance(values, dict):
        return len(np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]))
    return len(values)


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_rewards_page_accuracy_is_core_on_the_store(rewards_app, rewards_db):
    from core.rewards import accuracy_by, one_of_n_accuracy, pairwise_accuracy

    at = rewards_app
    _ok(at)
    assert at.title[0].value == "Rewards"
    assert at.selectbox(key="rw_dataset").value == "prefs"
    sources = _frame(at, "what produced the scores (as stored)")
    assert list(sources["source"]) == ["bt-probe-dense", "bt-probe-sae", "verifier"]
    assert sources["what produced the scores (as stored)"].str.len().min() > 20
    table = _frame(at, "1-of-N 95%")
    assert list(table["source"]) == list(sources["source"])
    for row in table.to_dict("records"):
        scores = _reward_scores(rewards_db, "prefs", row["source"])
        pw, one = pairwise_accuracy(scores), one_of_n_accuracy(scores)
        assert row["pairwise"] == pytest.approx(pw.value)
        assert row["pairwise 95%"] == f"[{pw.ci_low:.3f}, {pw.ci_high:.3f}]"
        assert row["pairs"] == pw.n
        assert row["1-of-N"] == pytest.approx(one.value)
        assert row["1-of-N 95%"] == f"[{one.ci_low:.3f}, {one.ci_high:.3f}]"
        assert row["1-of-N chance"] == pytest.approx(one.chance)
        assert row["prompts"] == one.n == 60
    verifier = table.set_index("source").loc["verifier"]
    assert verifier["pairwise"] == 1.0 and verifier["1-of-N"] == 1.0  # the demo's verifier is exact

    # accuracy per task (a tag of the prompt): the chart's numbers are accuracy_by's
    at.selectbox(key="rw_by").select("task").run()
    _ok(at)
    per = _frame(at, "chance")
    want = accuracy_by(
        _reward_scores(rewards_db, "prefs", "bt-probe-sae").merge(
            _task_of(rewards_db), on="example_id"
        ),
        by="task",
    )
    got = per[per["source"] == "bt-probe-sae"]
    assert list(got["group"]) == list(want["task"])
    assert got["acc"].to_numpy() == pytest.approx(want["pairwise"].to_numpy())
    assert list(got["n"]) == list(want["n_pairs"])
    assert any("No calibration to show" in i.value for i in at.info)  # no ordinal RM here


def _task_of(db):
    from core.store import Store, Views

    wide = Store(db).wide("prefs", views=Views(None, None, None), columns=["id", "task"])
    return wide.to_pandas().rename(columns={"id": "example_id"})


def test_rewards_page_compares_the_chosen_sources(rewards_app, rewards_db):
    from core.rewards import agreement

    at = rewards_app
    _ok(at)
    # the verifier first (a reference), then probes with SAE features before dense ones
    assert (at.selectbox(key="rw_a").value, at.selectbox(key="rw_b").value) == (
        "verifier",
        "bt-probe-sae",
    )
    shown = []
    for b in ("bt-probe-sae", "bt-probe-dense"):
        at.selectbox(key="rw_b").select(b).run()
        _ok(at)
        want = agreement(
            _reward_scores(rewards_db, "prefs", "verifier"),
            _reward_scores(rewards_db, "prefs", b),
        )
        assert _metric(at, "Pair agreement") == f"{want.pair_agreement:.3f}"
        assert _metric(at, "Spearman") == f"{want.spearman:.3f}"
        assert _metric(at, "Best-of-n agreement") == f"{want.top1_agreement:.3f}"
        shown.append(_metric(at, "Spearman"))
        figs = _figures(at)
        scatter = figs["rewards-scatter"]
        assert sum(_n(t["x"]) for t in scatter["data"]) == want.n_items
        assert scatter["layout"]["yaxis"]["title"]["text"] == f"score under {b}"
        by = _frame(at, "pair_agreement")
        assert int(by["n_items"].sum()) == want.n_items  # every response in one cluster row
        picks = _frame(at, "n_candidates")  # best-of-n picks per prompt, differing picks first
        assert len(picks) == want.n_prompts
        assert float(picks["agree"].mean()) == pytest.approx(want.top1_agreement)
        assert bool(picks["agree"].is_monotonic_increasing)
        assert bool(picks["response_a"].notna().all())
    assert shown[0] != shown[1]
    # the disagreement view follows A and B; its table is core's order (largest |rank_diff| first)
    table = _frame(at, "rank_diff")
    assert {"score verifier", "score bt-probe-dense"} <= set(table.columns)
    gap = table["rank_diff"].abs().to_numpy()
    assert (gap[:-1] >= gap[1:]).all()


def test_rewards_page_draws_capped_pairs_coloured_by_source_a(rewards_app, rewards_db):
    from core.rewards import preference_pairs

    at = rewards_app
    at.selectbox(key="rw_a").select("bt-probe-sae").run()
    at.slider(key="rw_pairs_cap").set_value(40).run()
    _ok(at)
    pairs = preference_pairs(_reward_scores(rewards_db, "prefs", "bt-probe-sae")).head(40)
    lines = [t for t in _figures(at)["rewards-pairs"]["data"] if t.get("mode") == "lines+markers"]
    drawn = {t["name"].split(" (")[0]: _n(t["x"]) // 3 for t in lines}
    assert sum(drawn.values()) == 40
    assert drawn.get("ordered right", 0) == int((pairs["margin"] > 0).sum())
    assert drawn.get("ordered wrong", 0) == int((pairs["margin"] < 0).sum())
    at.selectbox(key="rw_pairs_show").select("ordered wrong").run()
    _ok(at)
    lines = [t for t in _figures(at)["rewards-pairs"]["data"] if t.get("mode") == "lines+markers"]
    assert [t["name"].split(" (")[0] for t in lines] == ["ordered wrong"]


@pytest.fixture(scope="module")
def rewards_copy(rewards_db, tmp_path_factory):
    """A copy of the rewards store with ``prefs2``: a preference set without a responses map,
    scored by the verifier, a constant imported source and an ordinal RM with logits (random,
    seeded: a stand-in, not a model), and a 1..3 feedback label ``rating``."""
    import json
    import shutil

    import numpy as np
    import pyarrow as pa

    from core.demo_data import write_demo_preferences
    from core.store import REWARD_SCHEMA, Store
    from tests.conftest import run_cli

    folder = tmp_path_factory.mktemp("rewards-copy")
    db = folder / "studio.duckdb"
    shutil.copy(rewards_db, db)
    prefs = write_demo_preferences(folder / "prefs2.jsonl", n=12, seed=1)
    d = ("--db", str(db))
    assert run_cli("ingest", str(prefs), "--dataset", "prefs2", "--kind", "preferences", *d) == 0
    assert run_cli("verify", "--dataset", "prefs2", *d) == 0
    s = Store(db)
    keys = s.reward_candidates("prefs2").to_pandas()[["example_id", "response_idx"]]
    flat = folder / "flat.jsonl"
    flat.write_text(
        "".join(
            json.dumps({"id": e, "response_idx": int(i), "score": 1.0}) + "\n"
            for e, i in keys.itertuples(index=False)
        )
    )
    argv = ("import-rewards", str(flat), "--dataset", "prefs2", "--name", "flat", *d)
    assert run_cli(*argv) == 0
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, size=(len(keys), 2)).astype(np.float32)
    logits[:, 1] = np.minimum(logits[:, 1], logits[:, 0])
    reward = 1.0 + (1.0 / (1.0 + np.exp(-logits))).sum(axis=1)
    s.add_run(
        RunRecord(
            REWARD_STEP,
            "prefs2",
            {"name": "wild", "kind": "rm", "head": "ordinal", "model": "test-stand-in"},
            {},
            {},
            source="test: seeded random CORAL logits (K=3)",
        ),
        scores=pa.table(
            {
                "example_id": pa.array(keys["example_id"], pa.string()),
                "response_idx": pa.array(keys["response_idx"], pa.int32()),
                "value": pa.array(reward, pa.float64()),
                "logits": pa.array([list(z) for z in logits], pa.list_(pa.float32())),
                "truncated": pa.array([False] * len(keys)),
            },
            schema=REWARD_SCHEMA,
        ),
    )
    ids = keys["example_id"].unique().tolist()
    s.set_labels(
        "prefs2",
        "rating",
        pa.table(
            {
                "example_id": pa.array(ids, pa.string()),
                "value": pa.array([float(1 + i % 3) for i in range(len(ids))], pa.float64()),
            }
        ),
    )
    return db


def test_rewards_page_says_what_is_missing_and_calibrates(rewards_copy, monkeypatch):
    from core.steps.judge import calibration
    from core.store import Store

    monkeypatch.setenv("SAERL_DB", str(rewards_copy))
    at = _rewards_page()
    _ok(at)
    assert at.selectbox(key="rw_dataset").options == ["prefs (preferences)", "prefs2 (preferences)"]
    assert not any("no responses map" in i.value for i in at.info)  # prefs has its map
    at.selectbox(key="rw_dataset").select("prefs2").run()
    assert at.session_state["dataset"] == "prefs2"  # the other pages open what was picked here
    _ok(at)
    infos = " ".join(i.value for i in at.info)
    assert "no responses map yet" in infos and "python -m core responses --dataset prefs2" in infos
    assert "rewards-pairs" not in _figures(at)
    # flat scores every response 1.0: rank correlations are undefined, said in one caption
    # defaults: the verifier, then a reward model before imported scores
    assert (at.selectbox(key="rw_a").value, at.selectbox(key="rw_b").value) == ("verifier", "wild")
    at.selectbox(key="rw_b").select("flat").run()
    assert _metric(at, "Spearman") == "n/a" and _metric(at, "Kendall τ-b") == "n/a"
    assert any("`flat` gives every response the same score" in c.value for c in at.caption)
    assert "No calibration to show" not in infos  # `wild` is ordinal
    at.selectbox(key="rw_cal_label").select("rating").run()
    _ok(at)
    want = calibration(Store(rewards_copy), dataset="prefs2", name="wild", label="rating")
    assert _metric(at, "ECE (top label)") == f"{want['ece']:.3f}"
    assert _metric(at, "Responses") == f"{want['n']:,}" == "12"
    reliability = _figures(at)["rewards-reliability"]
    assert reliability["layout"]["title"]["text"] == "Reliability of wild against rating (K=3)"
    # prefs has no ordinal source: the page says so rather than drawing a chart
    at.selectbox(key="rw_dataset").select("prefs").run()
    _ok(at)
    assert any("No calibration to show" in i.value for i in at.info)
