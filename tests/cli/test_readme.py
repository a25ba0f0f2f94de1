"""README's "Where each command lives" is COMMANDS as a table, so the two cannot drift."""

from pathlib import Path

from core.cli import commands_table

README = Path(__file__).parent.parent.parent / "README.md"
HEADING = "### Where each command lives\n"


def _readme_table() -> str:
    """The first markdown table under the heading."""
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README lacks the heading {HEADING.strip()!r}"
    section = text.split(HEADING, 1)[1]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def test_readme_table_is_the_commands_table() -> None:
    """On failure, paste `python -c "from core.cli import commands_table as t; print(t())"`."""
    assert _readme_table() == commands_table()
