"""Every user string that reaches the browser goes through one of these functions.

Dataset names, label and tag names, ids, prompts, reward-source names and rule-set notes come
from files we do not control. Streamlit renders markdown (links, images, emoji and colour
shortcodes, LaTeX) in st.markdown, st.caption, st.info, headings and widget labels; Plotly renders
a subset of HTML (``<a href>``, ``<b>``, ``<br>``) in hover text, legend entries and titles. So:

- :func:`md` for markdown and widget labels: every ASCII punctuation character is
  backslash-escaped (CommonMark lets any of them be escaped and shows it literally), which stops
  links, images, raw HTML, ``$math$``, ``:red[colour]`` directives and code spans; newlines
  become spaces so a name cannot start a heading or a list. Escapes do not stop what Streamlit's
  renderer finds in the text after parsing (remark-gfm's bare-URL and e-mail autolinks,
  remark-emoji's ``:shortcodes:``): there an invisible WORD JOINER (U+2060, :data:`JOINER`) goes
  after ``http``/``https``/``www`` and ``@``, and after the colon that opens a shortcode, so the
  text reads the same and matches none of them. Never put its result inside a code span
  (backslashes show there).
- :func:`code` for a user value (or a command holding one) shown as inline code: a code span
  whose backtick fence is longer than any run of backticks in the text, so the text cannot
  close it; inside, markdown, HTML, math and shortcodes are not parsed. Values in a command
  are shell-quoted first (:func:`shlex.quote`) so the command can be pasted as it is.
- :func:`html_text` for Plotly text and ``unsafe_allow_html`` / ``st.html`` snippets:
  ``<``, ``>`` and ``&`` as entities and quotes as numeric ones (``&#34;``, ``&#39;``), since
  Plotly decodes numeric entities but shows ``&quot;`` as it is written.

Where Streamlit shows plain text (dataframe cells, st.text, st.code, the options of a selectbox),
nothing is escaped: an escape would show there.

    >>> md("[x](http://e.com)").replace(JOINER, "+")
    '\\\\[x\\\\]\\\\(http+\\\\:\\\\/\\\\/e\\\\.com\\\\)'
    >>> html_text('<a href="x">id</a>')
    '&lt;a href=&#34;x&#34;&gt;id&lt;/a&gt;'
    >>> code("a`b")
    '``a`b``'
"""

from __future__ import annotations

import html
import re
import string

_PUNCT = re.compile("([" + re.escape(string.punctuation) + "])")
_SPACE = re.compile(r"\s+")
_TICKS = re.compile(r"`+")
JOINER = "\u2060"  # WORD JOINER: invisible, no break; splits what autolinks and shortcodes match
_FOUND_IN_TEXT = re.compile(r"(?i)(https?(?=:)|www(?=\.)|@|:(?=[\w+/-]+:))")


def md(text: object) -> str:
    """``text`` shown literally inside markdown (one line)."""
    one_line = _SPACE.sub(" ", str(text))
    return _PUNCT.sub(r"\\\1", _FOUND_IN_TEXT.sub(lambda m: m.group(1) + JOINER, one_line))


def html_text(text: object) -> str:
    """``text`` shown literally inside HTML (Plotly hover text, legends, titles, our snippets)."""
    return html.escape(str(text), quote=False).replace('"', "&#34;").replace("'", "&#39;")


def code(text: object) -> str:
    """``text`` as one inline code span (one line), shown literally whatever it holds."""
    body = _SPACE.sub(" ", str(text))
    if not body:
        return ""
    fence = "`" * (max((len(t) for t in _TICKS.findall(body)), default=0) + 1)
    # CommonMark strips one space from each side when both are there (and the body is not all
    # spaces): pad a body that starts or ends with a backtick (it would merge with the fence) or
    # that already has a space on each side (one would be stripped)
    pad = body[0] == "`" or body[-1] == "`" or (body[0] == body[-1] == " " and body.strip() != "")
    return f"{fence} {body} {fence}" if pad else f"{fence}{body}{fence}"
