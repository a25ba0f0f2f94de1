"""The one exception type the CLI and the app turn into a one-line message."""


class StudioError(Exception):
    """A user-facing error: the message is one line that names the file, line, field or mismatch.

    The CLI prints it as ``error: <message>`` and exits 2; pages show it with ``st.error``.
    Raise it before anything is written, so a failed command leaves the store as it was.
    """
