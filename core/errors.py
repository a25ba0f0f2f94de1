"""The one exception type the CLI and the app turn into a one-line message."""

from __future__ import annotations

FIELD = "{field}"


class StudioError(Exception):
    """A user-facing error: the message is one line that names the file, line, field or mismatch.

    The CLI prints it as ``error: <message>`` and exits 2; pages show it with ``st.error``.
    Raise it before anything is written, so a failed command leaves the store as it was.

    ``field`` names the config field at fault (``"mix"``), so each front end can name it its own
    way: a message may say ``{field}`` where the name goes, which ``str()`` fills with the field
    itself and the CLI with its flag. Example::

        exc = StudioError("{field} must lie in [0, 1]", field="mix")
        str(exc)                 # 'mix must lie in [0, 1]'
        exc.render("--mix")      # '--mix must lie in [0, 1]'
    """

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def render(self, name: str) -> str:
        """The message with ``{field}`` spelled ``name`` (a flag, a widget label ...)."""
        text = str(self.args[0]) if self.args else ""
        return text.replace(FIELD, name) if self.field else text

    def __str__(self) -> str:
        return self.render(self.field) if self.field else super().__str__()
