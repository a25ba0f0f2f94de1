"""add_run: one call writes a finished run of any step and its rows, all or nothing."""

from collections.abc import Callable
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from core.errors import StudioError
from core.store import RUN_STEPS, RUN_TABLES, RunRecord, Store
from tests.store.helpers import score_rows

IDS = [f"e{i}" for i in range(5)]  # the examples of the `store` fixture's dataset 'd'


def _feature_run(s: Store) -> int:
    run, _ = s.begin_run(RunRecord("featurize", "d", {"k": 2}, {}))
    s.finish_run(run, summary={"d_sae": 16})
    return run


def _probe(bad: bool) -> dict[str, Any]:
    value = [0.5, None] if bad else [0.5, 0.25]  # value is NOT NULL
    return {"scores": pa.table({"example_id": IDS[:2], "value": value, "oof": [0.1, None]})}


def _reward(bad: bool) -> dict[str, Any]:
    scores = score_rows([("e0", -1), ("e1", -1)])
    if bad:
        scores = scores.set_column(2, "value", pa.array([1.0, None], pa.float64()))
    return {"scores": scores}


def _cluster(bad: bool) -> dict[str, Any]:
    # the second table fails, so the first one's rows must be rolled back too
    size = pd.array([3, None if bad else 2], dtype="Int64")  # size is NOT NULL
    clusters = pd.DataFrame({"cluster": [0, 1], "size": size, "label": ["a", "b"]})
    clusters["top_features"] = ["[1]", "[2]"]
    assignments = pa.table({"example_id": IDS, "cluster": [0, 0, 0, 1, 1]})
    return {"assignments": assignments, "clusters": clusters}


def _project(bad: bool) -> dict[str, Any]:
    return {
        "points": pa.table(
            {"example_id": IDS, "x": [0.0, 1, 2, 3, None if bad else 4], "y": [0.0] * 5}
        )
    }


def _dedup(bad: bool) -> dict[str, Any]:
    rep = [True, None] if bad else [True, False]
    return {
        "groups": pa.table({"example_id": IDS[:2], "group_id": [7, 7], "is_representative": rep})
    }


# step -> (config, how the run's rows are built: good, or with one bad row in its last table)
STEPS: dict[str, tuple[dict[str, Any], Callable[[bool], dict[str, Any]]]] = {
    "probe": ({"name": "quality"}, _probe),
    "reward": ({"name": "rm"}, _reward),
    "cluster": ({"k": 2}, _cluster),
    "project": ({"seed": 0}, _project),
    "dedup": ({"threshold": 0.9}, _dedup),
    "train-sae": ({"out": "data/saes/x"}, lambda bad: {}),
}


def _record(step: str, parent: int) -> RunRecord:
    source = "test" if step == "reward" else None
    return RunRecord(
        step, "d", STEPS[step][0], {"core": "1"}, {"n": 5}, parent_run=parent, source=source
    )


def _run_rows(s: Store) -> dict[str, int]:
    """Rows per run table, over all runs."""
    with s.connect() as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in RUN_TABLES}


def test_every_step_of_the_registry_is_tested_here() -> None:
    assert set(STEPS) == set(RUN_STEPS)


@pytest.mark.parametrize("step", sorted(STEPS))
def test_add_run_writes_the_run_and_its_tables(store: Store, step: str) -> None:
    fr = _feature_run(store)
    rows = STEPS[step][1](False)
    rid = store.add_run(_record(step, fr), **rows)
    run = store.run(rid)
    assert (run["step"], run["dataset"], run["status"], run["parent_run"]) == (
        step,
        "d",
        "done",
        fr,
    )
    assert run["config"] == STEPS[step][0] and run["summary"] == {"n": 5}
    assert run["versions"] == {"core": "1"} and run["finished_at"] is not None
    written = {spec.table: len(rows[spec.arg]) for spec in RUN_STEPS[step].tables}
    with store.connect() as con:
        for table, n in written.items():
            got = con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [rid]).fetchall()
            assert got[0][0] == n, table
    assert {t: n for t, n in _run_rows(store).items() if n} == written


@pytest.mark.parametrize("step", sorted(s for s in STEPS if RUN_STEPS[s].tables))
def test_a_bad_table_writes_nothing(store: Store, step: str) -> None:
    fr = _feature_run(store)
    runs_before = len(store.list_runs())
    with pytest.raises(duckdb.ConstraintException):
        store.add_run(_record(step, fr), **STEPS[step][1](True))
    assert len(store.list_runs()) == runs_before  # no run row
    assert not any(_run_rows(store).values())  # and no row of any of its tables


def test_what_each_step_reads_back(store: Store) -> None:
    """The rows land where the readers find them: clusters, map points, scores by name."""
    fr = _feature_run(store)
    store.add_run(_record("cluster", fr), **_cluster(False))
    store.add_run(_record("project", fr), **_project(False))
    probe = store.add_run(_record("probe", fr), **_probe(False))
    reward = store.add_run(_record("reward", fr), **_reward(False))
    views = store.views("d")
    assert views.score_runs == (("quality", probe),)
    wide = store.wide("d", views=views, columns=["id", "cluster", "x", "quality"]).to_pandas()
    assert wide["cluster"].tolist() == [0, 0, 0, 1, 1]
    assert wide["x"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert wide["quality"].iloc[:2].tolist() == [0.5, 0.25]
    assert store.clusters(views.cluster_run or -1)["label"].tolist() == ["a", "b"]
    assert store.reward_runs("d") == {"rm": reward}
    assert store.reward_source(reward) == "test"


def test_what_add_run_refuses_before_writing(store: Store) -> None:
    fr = _feature_run(store)
    with pytest.raises(ValueError, match="no table is written by a 'featurize' run"):
        store.add_run(RunRecord("featurize", "d", {}, {}))
    with pytest.raises(ValueError, match="writes scores; got points"):
        store.add_run(_record("probe", fr), points=_project(False)["points"])
    with pytest.raises(ValueError, match="writes assignments, clusters; got assignments"):
        store.add_run(_record("cluster", fr), assignments=_cluster(False)["assignments"])
    with pytest.raises(ValueError, match="projections lack column\\(s\\) y"):
        store.add_run(_record("project", fr), points=pa.table({"example_id": IDS, "x": [0.0] * 5}))
    with pytest.raises(StudioError, match="a probe run needs a score name"):
        store.add_run(RunRecord("probe", "d", {}, {}, parent_run=fr), **_probe(False))
    with pytest.raises(ValueError, match="a dedup run needs its feature run"):
        store.add_run(RunRecord("dedup", "d", {}, {}), **_dedup(False))
    with pytest.raises(ValueError, match="a reward run needs the source of its rows"):
        store.add_run(RunRecord("reward", "d", {"name": "rm"}, {}), **_reward(False))
    with pytest.raises(StudioError, match=r"no response \('e9', response_idx -1\)"):
        store.add_run(_record("reward", fr), scores=score_rows([("e0", -1), ("e9", -1)]))
    with pytest.raises(StudioError, match=r"reward 'rm': \('e1', response_idx -1\) is scored 2"):
        store.add_run(
            _record("reward", fr), scores=score_rows([("e1", -1), ("e0", -1), ("e1", -1)])
        )
    assert len(store.list_runs()) == 1 and not any(_run_rows(store).values())  # the feature run


def test_begin_run_checks_the_record_and_resumes(store: Store) -> None:
    record = RunRecord("reward", "d", {"name": "rm"}, {})
    rid, resumed = store.begin_run(record)
    assert not resumed and store.run(rid)["status"] == "running"
    assert store.begin_run(record) == (rid, True)
    assert store.begin_run(record, resume=False)[0] != rid
    with pytest.raises(StudioError, match="a reward run needs a name"):
        store.begin_run(RunRecord("reward", "d", {}, {}))
    with pytest.raises(ValueError, match="needs a step"):
        RunRecord("", "d", {}, {})
