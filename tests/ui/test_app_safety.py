"""The app under hostile text, a bad database and a curious Export page (issue 12).

A store whose dataset names, ids, prompts, tag and label names, reward-source name and rule set
carry markdown, HTML and URLs (``HOSTILE``) is opened on every page under AppTest: every text
Streamlit renders as markdown must show them literally (rendered with markdown-it as Streamlit's
CommonMark renderer would: no link, no image, no raw HTML, no unescaped math or colour
shortcode) and every Plotly text must hold them HTML-escaped. tests/e2e/test_browser.py opens the
same store in Chromium. The Export page writes only inside its export folder; a file that is not
a store is one error line on every page; the served app listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import PIPELINE_LAYER, run_cli

APP = str(Path(__file__).resolve().parents[2] / "app.py")
ROOT = Path(APP).parent
PAGES = (
    "pages/overview.py",
    "pages/map.py",
    "pages/clusters.py",
    "pages/difficulty.py",
    "pages/quality.py",
    "pages/rewards.py",
    "pages/features.py",
    "pages/export.py",
)

# Each would render as something other than its text if it reached markdown or HTML unescaped:
# a link, an image (fetched from a remote host), an anchor, an image with a script, a code span,
# a colour directive, math, a heading, a bare autolink. 127.0.0.1:9 (discard) answers nothing.
HOSTILE = (
    "[x](http://127.0.0.1:9/a)",
    "![i](http://127.0.0.1:9/i.png)",
    '<a href="http://127.0.0.1:9/">id</a>',
    "<img src=http://127.0.0.1:9/x onerror=alert(1)>",
    "`code`",
    ":red[x]",
    "$x$",
    "# h",
    "http://127.0.0.1:9/bare",
)
HOSTILE_URL = "127.0.0.1:9"
DATASET = "# h [x](http://127.0.0.1:9/a) `code` :red[x]"
PREFS = "![i](http://127.0.0.1:9/i.png) $x$ <b>p</b>"
TAG = '<a href="http://127.0.0.1:9/">tag</a>'
LABEL = "![l](http://127.0.0.1:9/l.png) :red[l]"
SOURCE = "<img src=http://127.0.0.1:9/r onerror=alert(1)> `r` [r](http://127.0.0.1:9/r)"
RULE_SET = "[rs](http://127.0.0.1:9/rs)"
RULE_NOTE = "![n](http://127.0.0.1:9/n.png) <img src=http://127.0.0.1:9/n2>"
RULE_DESCRIPTION = "![d](http://127.0.0.1:9/d.png) [d](http://127.0.0.1:9/d) $d$"
N_ROWS = 36
# Generous outer limits for what depends on the machine's speed: reaching them skips the test
# (with the reason), it never fails it; correctness is asserted on what the page shows.
SERVE_TIMEOUT_S = 300
APPTEST_TIMEOUT_S = 600

pytestmark = pytest.mark.slow


def _prompt_rows() -> list[dict[str, Any]]:
    """N_ROWS prompts: the first ones with a hostile id and prompt, a hostile tag and label."""
    from core.demo_data import build_demo_records

    rows = []
    for i, rec in enumerate(build_demo_records(n=N_ROWS, seed=3, corrupt_share=0.0)):
        hostile = HOSTILE[i % len(HOSTILE)]
        rows.append(
            {
                "id": HOSTILE[i] if i < len(HOSTILE) else f"row-{i:03d}",
                "prompt": f"{rec['prompt']} {hostile}",
                "answer": str(rec.get("answer", "")),
                TAG: HOSTILE[i % 3],
                LABEL: float(rec["difficulty"]) + 0.1 * (i % 3),
            }
        )
    return rows


def _preference_rows(folder: Path) -> list[dict[str, Any]]:
    """The demo's preferences (12 prompts) with hostile ids and a hostile chosen response."""
    from core.demo_data import write_demo_preferences

    path = write_demo_preferences(folder / "prefs-src.jsonl", n=12, seed=1)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        if i < len(HOSTILE):
            row["id"] = f"p{i} {HOSTILE[i]}"
            row["prompt"] = f"{row['prompt']} {HOSTILE[i]}"
    return rows


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def build_hostile_store(folder: Path, *, bert: Path, sae: Path) -> Path:
    """The hostile store (see the module doc) in ``folder``, through the CLI, and a rule set in
    ``folder/data/rules`` (the Export page lists data/rules of the app's working folder)."""
    db = folder / "hostile.duckdb"
    d = ("--db", str(db))
    model = ("--model", str(bert), "--layer", str(PIPELINE_LAYER), "--sae-path", str(sae))
    data = _jsonl(folder / "prompts.jsonl", _prompt_rows())
    assert run_cli("ingest", str(data), "--dataset", DATASET, "--kind", "prompts", *d) == 0
    assert run_cli("featurize", "--dataset", DATASET, *model, "--dense", *d) == 0
    assert run_cli("cluster", "--dataset", DATASET, "--k", "3", *d) == 0
    assert run_cli("project", "--dataset", DATASET, *d) == 0
    base = ("--label", LABEL, "--folds", "3", "--baselines", "none", *d)
    assert run_cli("difficulty", "--dataset", DATASET, *base) == 0

    prefs = _jsonl(folder / "prefs.jsonl", _preference_rows(folder))
    assert run_cli("ingest", str(prefs), "--dataset", PREFS, "--kind", "preferences", *d) == 0
    assert run_cli("verify", "--dataset", PREFS, *d) == 0
    from core.store import Store

    keys = Store(db).reward_candidates(PREFS).to_pandas()[["example_id", "response_idx"]]
    scores = [
        {"id": e, "response_idx": int(i), "score": float((k * 7) % 5)}
        for k, (e, i) in enumerate(keys.itertuples(index=False))
    ]
    flat = _jsonl(folder / "scores.jsonl", scores)
    assert run_cli("import-rewards", str(flat), "--dataset", PREFS, "--name", SOURCE, *d) == 0
    responses = PREFS + ".responses"
    assert run_cli("responses", "--dataset", PREFS, *d) == 0
    pool = ("--pool-over", "response")
    assert run_cli("featurize", "--dataset", responses, *model, *pool, *d) == 0
    assert run_cli("cluster", "--dataset", responses, "--k", "2", *d) == 0
    assert run_cli("project", "--dataset", responses, *d) == 0

    rules = folder / "data" / "rules"
    rules.mkdir(parents=True)
    rule_set = {
        "name": RULE_SET,
        "description": RULE_DESCRIPTION,
        "version": 1,
        "rules": [
            {"action": "drop", "where": "cluster=0", "note": RULE_NOTE},
            # an id the dataset lacks: the page warns, quoting the rule
            {"action": "keep", "ids": [HOSTILE[0], "missing [m](http://127.0.0.1:9/m)"]},
        ],
    }
    (rules / "hostile.json").write_text(json.dumps(rule_set))
    return db


@pytest.fixture(scope="session")
def hostile_folder(tmp_path_factory, tiny_bert_dir, tiny_sae_dir) -> Path:
    """A folder holding hostile.duckdb and data/rules/hostile.json. Read-only for tests."""
    folder = tmp_path_factory.mktemp("hostile")
    build_hostile_store(folder, bert=tiny_bert_dir, sae=tiny_sae_dir)
    return folder


# --- what a page shows, as a browser would render it ------------------------------------------------
# Streamlit renders these as markdown: st.markdown/caption/alerts/headings (body), metric
# values and deltas, every label and help text (widgets, metrics, expanders).
_MARKDOWN_BODY = {
    "markdown",
    "caption",
    "title",
    "header",
    "subheader",
    "error",
    "warning",
    "info",
    "success",
    "toast",
    "metric",
}
# What would act on a user string that reached markdown unescaped, looked for outside code
# spans: CommonMark renders links, images and raw HTML (checked on markdown-it's output), and
# Streamlit's parser adds math ($...$) and colour directives (:red[...]) (checked on the source:
# a backslash escape stops them) ...
_UNESCAPED = (
    re.compile(r"(?<!\\)\$"),  # math
    re.compile(r"(?<!\\):red(?<!\\)\["),  # a colour directive
    re.compile(r"(?<!\\)\]\("),  # a link or an image
    re.compile(r"(?<!\\)<(?:a|img|b)\b"),  # raw HTML
    re.compile(r"(?m)^[ ]{0,3}# h"),  # a heading made by a name
)
# ... and, after parsing, remark-gfm links bare URLs and e-mail addresses and remark-emoji
# replaces :shortcodes: in the text itself, escapes resolved (checked on the rendered text)
_FOUND_IN_TEXT = (
    re.compile(r"(?i)(?:https?://|www\.)[-\w]+\."),
    re.compile(r"[-.+\w]+@[-\w]+\.[-\w]"),
    re.compile(r":[\w+-]+:"),
)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)


def markdown_texts(at: AppTest) -> list[tuple[str, str]]:
    """(element kind and field, markdown source) of every text the page renders as markdown."""
    out: list[tuple[str, str]] = []

    def walk(node: Any) -> None:
        proto = getattr(node, "proto", None)
        kind = str(getattr(node, "type", type(node).__name__))
        if proto is not None:
            fields = ["label", "help", "delta", "delta_description"]
            fields += ["body"] if kind in _MARKDOWN_BODY else []
            for field in fields:
                value = getattr(proto, field, None)
                if isinstance(value, str) and value:
                    out.append((f"{kind}.{field}", value))
            expandable = getattr(proto, "expandable", None)
            if expandable is not None and expandable.label:
                out.append((f"{kind}.expander", expandable.label))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)  # AppTest's element tree (main, sidebar)
    return out


def rendered(source: str) -> str:
    """``source`` as CommonMark renders it (HTML)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").render(source)


def check_markdown(where: str, source: str) -> None:
    """No link, image or raw HTML once rendered, and nothing left outside code spans for
    Streamlit's own extensions to act on."""
    out = rendered(source)
    assert "<a " not in out and "<img" not in out, (where, source, out)
    outside = _CODE_SPAN.sub("", source)
    for pattern in _UNESCAPED:
        assert not pattern.search(outside), (where, pattern.pattern, source)
    text = html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<code>.*?</code>", "", out, flags=re.S)))
    for pattern in _FOUND_IN_TEXT:
        assert not pattern.search(text), (where, pattern.pattern, text)


def seen(source: str) -> str:
    """Markdown as the text a reader sees (ui.text's invisible word joiners left out)."""
    from ui.text import JOINER

    return html.unescape(re.sub(r"<[^>]+>", "", rendered(source))).replace(JOINER, "")


def shown_text(at: AppTest) -> str:
    """Everything the page renders as markdown, as the text a reader sees."""
    return "\n".join(seen(source) for _, source in markdown_texts(at))


def check_page(at: AppTest) -> None:
    """The page ran, and every markdown text and Plotly string and HTML snippet on it is safe."""
    assert not at.exception, [e.value for e in at.exception]
    for where, source in markdown_texts(at):
        check_markdown(where, source)
    for el in at.get("html"):
        body = el.proto.body
        assert HOSTILE_URL + '/"' not in body and "src=http" not in body, body
    for where, text in plotly_texts(at):
        low = text.lower()
        assert "<a " not in low and "<img" not in low, (where, text)  # Plotly draws <a href>
        assert "&quot;" not in text, (where, text)  # Plotly shows a named quote entity as is


def figures(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def plotly_texts(at: AppTest) -> Iterator[tuple[str, str]]:
    """(where, text) of every string a page's Plotly figures draw: layout strings, trace names
    and texts, and the customdata columns a hovertemplate shows (the Map keeps each point's id
    as stored in a column it never shows, for its selection)."""

    def strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
        if isinstance(value, str):
            yield path, value
        elif isinstance(value, dict) and "bdata" not in value:  # bdata: a typed number array
            for k, v in value.items():
                yield from strings(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from strings(v, f"{path}[{i}]")

    for n, spec in enumerate(figures(at)):
        yield from strings(spec.get("layout", {}), f"fig{n}.layout")
        for t, trace in enumerate(spec.get("data", [])):
            where = f"fig{n}.data[{t}]"
            template = str(trace.get("hovertemplate", ""))
            shown = {int(i) for i in re.findall(r"customdata\[(\d+)\]", template)}
            for key, value in trace.items():
                if key != "customdata":
                    yield from strings(value, f"{where}.{key}")
            for r, row in enumerate(trace.get("customdata") or []):
                for i in shown:
                    if isinstance(row[i], str):
                        yield f"{where}.customdata[{r}][{i}]", row[i]


def _app(folder: Path, monkeypatch: pytest.MonkeyPatch, *, export_dir: Path | None = None):
    """AppTest of the app on ``folder``'s hostile store, run once (the Overview page)."""
    monkeypatch.chdir(folder)  # data/rules of the app's working folder holds the rule set
    monkeypatch.setenv("SAERL_DB", str(folder / "hostile.duckdb"))
    monkeypatch.setenv("SAERL_EXPORT_DIR", str(export_dir or folder / "exports"))
    at = AppTest.from_file(APP, default_timeout=APPTEST_TIMEOUT_S)
    at.run()
    return at


def _open(at: AppTest, page: str, *, dataset: str | None = DATASET) -> AppTest:
    if dataset is not None:
        at.session_state["dataset"] = dataset
    at.switch_page(page).run()
    return at


# --- 5: hostile text is shown literally on every page ---------------------------------------------
def test_md_and_html_text_show_every_hostile_string_literally():
    from ui.text import code, html_text, md

    for text in HOSTILE:
        check_markdown("md", md(text))
        check_markdown("code", code(text))
        assert seen(md(text)).strip() == text and seen(code(text)).strip() == text
        assert html.unescape(html_text(text)) == text and "<" not in html_text(text)
    assert code("a ``b`` c") == "```a ``b`` c```" and code("`x") == "`` `x ``"
    assert html_text("\"'") == "&#34;&#39;"  # Plotly decodes numeric entities, not &quot;
    for text in ("www.example.com", "me@example.com", ":smile: and :material/home:"):
        check_markdown("md", md(text))  # Streamlit would link or replace them after parsing
        assert seen(md(text)).strip() == text


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_hostile_text_literally(hostile_folder, monkeypatch, page):
    at = _open(_app(hostile_folder, monkeypatch), page)
    check_page(at)
    assert not at.error, [e.value for e in at.error]


def test_hostile_names_are_shown_as_written(hostile_folder, monkeypatch):
    """Where the pages print the names, a reader sees them exactly as written."""
    from ui.text import html_text

    at = _open(_app(hostile_folder, monkeypatch), "pages/map.py")
    shown = shown_text(at)
    assert f"{LABEL}_proxy: run" in shown and f"the label '{LABEL}'" in shown  # provenance
    # the map's hover shows each id escaped; the selection still reads the id as stored
    specs = figures(at)
    rows = [row for t in specs[0]["data"] for row in t["customdata"]]
    by_id = {row[0]: row for row in rows}
    assert set(HOSTILE) <= set(by_id)
    for text in HOSTILE:
        assert by_id[text][4] == html_text(text)
    top = [row[3] for row in rows if row[3]]
    assert top and all("&lt;br&gt;" not in t for t in top)  # one feature a line, as before
    assert any("<br>" in t for t in top)
    # a tag's values as legend entries: escaped
    at.selectbox(key="map_color").select(TAG).run()
    check_page(at)
    names = {t["name"] for t in figures(at)[0]["data"]}
    assert {html_text(v[:28]) for v in HOSTILE[:3]} <= names  # cut to 28, then escaped

    at = _open(at, "pages/clusters.py")
    check_page(at)
    assert f"categorical tags ({TAG})" in shown_text(at)

    at.session_state["rules_file"] = "hostile.json"  # the rule set picked as the page opens
    at = _open(at, "pages/export.py")
    check_page(at)
    assert not at.error, [e.value for e in at.error]
    shown = shown_text(at)
    assert f"{TAG} (tag; empty = all)" in shown and f"{LABEL} (label, {N_ROWS} rows)" in shown
    assert RULE_DESCRIPTION in shown
    assert any("1 of 2 ids are not in this dataset" in w.value for w in at.warning)
    assert at.text_input(key="rules_save_name").value == RULE_SET  # plain text: as written
    hist = [f for f in figures(at) if "all vs exported" in str(f["layout"].get("title"))]
    want = html_text(f"{LABEL}: all vs exported")
    assert any(f["layout"]["title"]["text"] == want for f in hist)

    at.query_params["example"] = HOSTILE[2]
    at = _open(at, "pages/features.py")
    check_page(at)
    assert f"Example {HOSTILE[2]}" in shown_text(at)
    at.query_params["example"] = "[gone](http://127.0.0.1:9/gone)"
    at.run()
    check_page(at)
    assert "No example '[gone](http://127.0.0.1:9/gone)'" in shown_text(at)

    at = _open(at, "pages/rewards.py", dataset=None)
    check_page(at)
    shown = shown_text(at)
    assert f"Compare verifier (A) with {SOURCE} (B)" in shown
    assert f"responses in '{PREFS}.responses'" in shown
    scatter = next(f for f in figures(at) if f["layout"].get("meta") == "rewards-scatter")
    assert scatter["layout"]["yaxis"]["title"]["text"] == html_text(f"score under {SOURCE}")
    assert all("%{" + "fullData" not in str(t.get("name")) for t in scatter["data"])


# --- a database that is not a store: one line on every page ---------------------------------------
def _foreign_duckdb(path: Path) -> Path:
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE orders (id INTEGER, total DOUBLE)")
    con.close()
    return path


BAD_STORES = {
    "empty": (lambda p: (p.write_bytes(b""), p)[1], "empty file"),
    "text": (lambda p: (p.write_text("id,prompt\n1,hello\n"), p)[1], "not a DuckDB file"),
    "foreign": (_foreign_duckdb, "not a SAERL Studio store"),
    "folder": (lambda p: (p.mkdir(), p)[1], "is a folder"),
}


@pytest.mark.parametrize("kind", list(BAD_STORES))
def test_a_file_that_is_not_a_store_is_one_error_line_on_every_page(kind, tmp_path, monkeypatch):
    make, words = BAD_STORES[kind]
    db = make(tmp_path / "studio.duckdb")
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setenv("SAERL_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=APPTEST_TIMEOUT_S)
    at.run()
    for page in PAGES:
        if page != PAGES[0]:
            at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert len(at.error) == 1, (page, [e.value for e in at.error])
        assert words in shown_text(at), (page, at.error[0].value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created beside it


# --- the Export page writes only inside its export folder -----------------------------------------
@pytest.fixture
def export_page(hostile_folder, tmp_path, monkeypatch):
    """The Export page on a copy of the hostile store, exporting into tmp_path/exports."""
    folder = tmp_path / "app"
    folder.mkdir()
    shutil.copy(hostile_folder / "hostile.duckdb", folder / "hostile.duckdb")
    out = tmp_path / "exports"
    at = _open(_app(folder, monkeypatch, export_dir=out), "pages/export.py")
    assert not at.exception and not at.error
    return at, folder, out


def _write(at: AppTest, name: str) -> AppTest:
    box = next(t for t in at.text_input if (t.key or "").startswith("exp_name_"))
    box.input(name).run()
    at.button(key="exp_write").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_export_page_writes_a_plain_name_inside_its_folder(export_page):
    at, _, out = export_page
    box = next(t for t in at.text_input if (t.key or "").startswith("exp_name_"))
    assert "/" not in box.value and box.value.endswith(".jsonl")  # a name, from the dataset's
    assert str(out.resolve()) in shown_text(at)  # the caption says where
    _write(at, "plain.jsonl")
    assert not at.error, [e.value for e in at.error]
    assert (out / "plain.jsonl").is_file() and (out / "plain.jsonl.manifest.json").is_file()
    assert "Wrote 36 rows to" in shown_text(at)
    _write(at, "sub/two.jsonl")
    assert (out / "sub" / "two.jsonl").is_file()


@pytest.mark.parametrize("name", ["../x.jsonl", "sub/../../x.jsonl", "ABS", ".", "  "])
def test_export_page_refuses_a_name_outside_its_folder(export_page, tmp_path, name):
    at = export_page[0]
    everything = _files(tmp_path)
    typed = str(tmp_path / "abs.jsonl") if name == "ABS" else name
    _write(at, typed)
    assert len(at.error) == 1, [e.value for e in at.error]
    assert not at.success
    assert _files(tmp_path) == everything  # nothing written, inside the folder or out of it


def test_export_page_will_not_replace_the_database(hostile_folder, tmp_path, monkeypatch):
    """The export folder holding the database (a careless --export-dir): naming the database
    is refused in one line, and the store is intact."""
    folder = tmp_path / "app"
    folder.mkdir()
    db = folder / "hostile.duckdb"
    shutil.copy(hostile_folder / "hostile.duckdb", db)
    data = db.read_bytes()
    at = _open(_app(folder, monkeypatch, export_dir=folder), "pages/export.py")
    _write(at, "hostile.duckdb")
    assert len(at.error) == 1 and "database" in at.error[0].value, [e.value for e in at.error]
    assert db.read_bytes() == data


def test_export_dir_from_the_command_line_then_the_environment(monkeypatch):
    from core.defaults import DEFAULT_EXPORT_DIR
    from ui.state import export_dir

    monkeypatch.delenv("SAERL_EXPORT_DIR", raising=False)
    monkeypatch.setattr(sys, "argv", ["app.py", "--db", "x.duckdb"])
    assert export_dir() == DEFAULT_EXPORT_DIR == "data/exports"
    monkeypatch.setenv("SAERL_EXPORT_DIR", "/srv/env")
    assert export_dir() == "/srv/env"
    monkeypatch.setattr(sys, "argv", ["app.py", "--db", "x.duckdb", "--export-dir", "/srv/cli"])
    assert export_dir() == "/srv/cli"


# --- 3: the served app listens on 127.0.0.1 only --------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(db: Path, port: int, *, args: tuple[str, ...] = (), cwd: Path = ROOT) -> subprocess.Popen:
    """`streamlit run app.py [ARGS] -- --db DB` on ``port`` (from ``cwd``: app.py by its path
    there), once its health endpoint answers. Waits for that event, not for a time: the process
    dying fails the test with its output; no answer within SERVE_TIMEOUT_S (a very busy
    machine) skips it."""
    app = "app.py" if cwd == ROOT else APP
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_SERVER_")}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "streamlit", "run", app),
            *("--server.port", str(port), *args),
            *("--", "--db", str(db)),
        ],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.fail(f"streamlit exited with {proc.returncode}: {out[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.skip(f"streamlit did not answer within {SERVE_TIMEOUT_S} s (busy machine)")
            time.sleep(0.2)  # between polls; the wait ends on the answer


@contextlib.contextmanager
def served(db: Path, *, args: tuple[str, ...] = (), cwd: Path = ROOT) -> Iterator[str]:
    """The app serving ``db`` as the README starts it, as its base URL; stopped on leaving."""
    port = _free_port()
    proc = serve(db, port, args=args, cwd=cwd)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            address, hex_port = parts[1].split(":")
            if parts[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


def _outward_ip() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_config_binds_the_app_to_loopback():
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["headless"] is True  # the settings it had stay


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
@pytest.mark.parametrize("where", ["project folder", "elsewhere"])
def test_streamlit_run_as_the_readme_says_listens_on_loopback_only(tmp_path, where):
    """`streamlit run app.py -- --db X` (no --server.address), from the project folder or with
    app.py's path from another folder (Streamlit also reads the config beside the script):
    only 127.0.0.1 listens."""
    db = tmp_path / "studio.duckdb"
    with served(db, cwd=ROOT if where == "project folder" else tmp_path) as url:
        port = int(url.rsplit(":", 1)[1])
        assert _listening(port) == ["0100007F"]  # 127.0.0.1, no 0.0.0.0 or ::
        ip = _outward_ip()
        if ip is not None:
            with pytest.raises(OSError), socket.create_connection((ip, port), timeout=5):
                pass
