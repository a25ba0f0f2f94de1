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
