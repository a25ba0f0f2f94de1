"""Every user string that reaches the browser goes through one of these two functions.

Dataset names, label and tag names, ids, prompts, reward-source names and rule-set notes come
from files we do not control. Streamlit renders markdown (links, images, emoji and colour
shortcodes, LaTeX) in st.markdown, st.caption, st.info, headings and widget labels; Plotly renders
a subset of HTML (``<a href>``, ``<b>``, ``<br>``) in hover text, legend entries and titles. So:

- :func:`md` for markdown and widget labels: every ASCII punctuation character is
  backslash-escaped (CommonMark lets any of them be escaped and shows it literally), which also
  breaks autolinks (``http\\://``), ``:shortcodes:``, ``$math$`` and code spans; newlines become
  spaces so a name cannot start a heading or a list.
- :func:`html_text` for Plotly text and ``unsafe_allow_html`` snippets: ``html.escape``.

    >>> md("[x](http://e.com)")
    '\\\\[x\\\\]\\\\(http\\\\:\\\\/\\\\/e\\\\.com\\\\)'
    >>> html_text('<a href="x">id</a>')
    '&lt;a href=&quot;x&quot;&gt;id&lt;/a&gt;'
"""

from __future__ import annotations

import html
import re
import string

_PUNCT = re.compile("([" + re.escape(string.punctuation) + "])")
_SPACE = re.compile(r"\s+")


def md(text: object) -> str:
    """``text`` shown literally inside markdown (one line)."""
    return _PUNCT.sub(r"\\\1", _SPACE.sub(" ", str(text)))


def html_text(text: object) -> str:
    """``text`` shown literally inside HTML (Plotly hover text, legends, our snippets)."""
    return html.escape(str(text), quote=True)
