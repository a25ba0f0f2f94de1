"""The app's loaders call the steps the CLI calls: the same export from the Export page's
write (ui.loaders.write_export) and from `python -m core export` writes the same manifest,
apart from the command that rewrites it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.export import ExportConfig, manifest_path
from core.filters import parse_rule_where
from core.rules import Rule, RuleSet, load_rule_set, save_rule_set
from core.steps.export import ExportRequest
from tests.conftest import run_cli
from tests.export.test_export_safety import _store


def test_the_page_and_the_cli_write_the_same_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "s.duckdb"
    _store(db)
    rules = save_rule_set(
        tmp_path / "rules" / "r.json",
        RuleSet(name="r", rules=(Rule(action="drop", where="difficulty=3", note="hardest"),)),
    )
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"e{i}\n" for i in range(15)))
    out = tmp_path / "exports" / "x.jsonl"  # both write here, one after the other
    out.parent.mkdir()
    argv = [
        "--where",
        "difficulty>=1",
        "--format",
        "verl",
        "--to",
        "jsonl",
        "--order",
        "easy-to-hard",
    ]
    code = run_cli(
        "export", "--db", str(db), "--dataset", "d", "--out", str(out),
        "--rules", str(rules), "--ids", str(ids), *argv,
    )  # fmt: skip
    assert code == 0
    cli = json.loads(manifest_path(out).read_text())
    cli_rows = out.read_bytes()
    for written in out.parent.iterdir():
        written.unlink()

    monkeypatch.setenv("SAERL_DB", str(db))
    from ui.loaders import write_export

    request = ExportRequest(
        "d",
        filters=(parse_rule_where("difficulty>=1"),),
        ids=tuple(f"e{i}" for i in range(15)),
        rule_set=load_rule_set(rules),
        rules_path=str(rules.absolute()),
    )
    cfg = ExportConfig(fmt="verl", container="jsonl", order="easy-to-hard")
    write_export(out, request=request, cfg=cfg)

    page = json.loads(manifest_path(out).read_text())
    assert cli["rule_set"]["name"] == "r" and cli["rule_set"]["path"] == str(rules.absolute())
    cli.pop("command"), page.pop("command")
    assert page == cli
    assert out.read_bytes() == cli_rows
