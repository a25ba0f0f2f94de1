"""`--help` prints what it printed before the CLI became a table: byte for byte.

The copies in tests/cli/help/ were taken from the if/elif CLI with COLUMNS=100
(`COLUMNS=100 python -m core CMD --help > tests/cli/help/CMD.txt`; `_main.txt` is
`python -m core --help`). A deliberate change to a help text updates its copy the same way.
"""

from pathlib import Path

import pytest

from core.cli import COMMANDS, main

HELP = Path(__file__).parent / "help"


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_every_command_has_a_saved_help() -> None:
    assert sorted(p.stem for p in HELP.glob("*.txt")) == sorted(["_main", *COMMANDS])


@pytest.mark.parametrize("command", ["_main", *COMMANDS])
def test_help_is_unchanged(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps at the terminal's width
    argv = ["--help"] if command == "_main" else [command, "--help"]
    assert _help(argv, capsys) == (HELP / f"{command}.txt").read_text(encoding="utf-8")
