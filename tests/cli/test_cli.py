"""The CLI's help: every default shown, and cheap to print."""

import argparse
import subprocess
import sys

import pytest

from core.cli import COMMANDS, build_parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_help_shows_every_default(command: str) -> None:
    """A default that cuts data (--max-length, --top-k, --threshold ...) is never hidden."""
    sp = _subparsers()[command]
    text = " ".join(sp.format_help().split())
    for action in sp._actions:
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            continue
        if isinstance(action.default, list):
            continue
        assert f"default: {action.default}" in text or f"default {action.default}" in text, (
            command,
            action.option_strings,
        )


def test_help_imports_no_heavy_module() -> None:
    """`python -m core --help` and every `python -m core CMD --help`, in one fresh process,
    load no pandas, duckdb, torch or numpy: handlers import core only when they run."""
    code = (
        "import contextlib, io, sys\n"
        "from core.cli import COMMANDS, main\n"
        "for argv in [['--help'], *([name, '--help'] for name in COMMANDS)]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
        "    assert 'usage: python -m core' in out.getvalue(), argv\n"
        "print(sorted(m for m in ('pandas', 'duckdb', 'torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_subparser_comes_from_the_table() -> None:
    """build_parser adds exactly COMMANDS, in the table's order (the order --help lists)."""
    assert list(_subparsers()) == list(COMMANDS)
