"""The COMMANDS table: every target is a real core function its handler calls, and a core error
that names a field is printed with the flag that sets it."""

import argparse
import importlib
import inspect
import pickle
import re
from pathlib import Path

import pytest

from core.cli import COMMANDS, FLAGS, build_parser, error_line, flag_for, main
from core.errors import StudioError


def _resolve(target: str) -> object:
    """'core.store:Store.list_runs' -> the function it names."""
    module, _, attrs = target.partition(":")
    obj: object = importlib.import_module(module)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj


def _targets(name: str) -> list[str]:
    command = COMMANDS[name]
    return [command.target, *(target for target, _ in command.also)]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_targets_resolve_and_handlers_call_them(name: str) -> None:
    """README's module:function exists, and the handler's code names it (so re-pointing a
    handler without its target, or the other way round, fails here)."""
    source = inspect.getsource(COMMANDS[name].handler)
    for target in _targets(name):
        assert callable(_resolve(target)), target
        function = target.rpartition(".")[2].rpartition(":")[2]
        assert re.search(rf"\b{function}\(", source), (name, target)


def test_flags_name_real_options() -> None:
    """Each FLAGS entry is a flag some command has, and is needed (the dashed field differs)."""
    options = {
        option
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for sub in action.choices.values()
        for a in sub._actions
        for option in a.option_strings
    }
    for field, flag in FLAGS.items():
        assert flag in options, (field, flag)
        assert flag != "--" + field.replace("_", "-"), field


def test_a_field_error_names_the_flag() -> None:
    exc = StudioError("{field} must lie in [0, 1]", field="mix")
    assert error_line(exc) == "--mix must lie in [0, 1]"
    assert error_line(StudioError("{field} is not a format", field="fmt")).startswith("--format ")
    assert flag_for("batch_size") == "--batch-size"
    # a message without a field prints as it is, braces and all
    assert error_line(StudioError("--template needs {prompt}")) == "--template needs {prompt}"


def test_field_survives_pickling() -> None:
    """Ray sends errors between processes by pickling them."""
    exc = pickle.loads(pickle.dumps(StudioError("{field} is negative", field="top_k")))
    assert exc.field == "top_k" and error_line(exc) == "--top-k is negative"


def test_a_cli_error_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "none.duckdb")
    argv = ["difficulty", "--dataset", "d", "--label", "x", "--range", "3,1", "--db", db]
    assert main(argv) == 2
    assert capsys.readouterr().err == "error: --range '3,1': LO is above HI\n"


def test_a_config_error_names_the_field_in_core_and_the_flag_in_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page shows ExportConfig's words (the field); the CLI prints its flag."""
    from core.export import ExportConfig

    with pytest.raises(StudioError) as caught:
        ExportConfig(fmt="jsonl", batch_size=4, mix=2.0)
    assert str(caught.value) == "mix must lie in [0, 1], got 2.0"
    code = main(
        ["export", "--db", str(tmp_path / "s.duckdb"), "--dataset", "d", "--out",
         str(tmp_path / "x.jsonl"), "--batch-size", "4", "--mix", "2"]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --mix must lie in [0, 1], got 2.0"
