"""Real-browser tests: Streamlit serves the app as `make run` does and Debian's Chromium opens
the Map page (the chart drawn with every point) and the Rewards page (the scatter and the
chosen -> rejected arrows)."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PIPELINE_ROWS

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(db: Path, port: int) -> subprocess.Popen:
    """`streamlit run app.py -- --db DB`, as `make run` does, waiting until it answers."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
            "--",
            "--db",
            str(db),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("streamlit did not answer within 60 s")


@contextlib.contextmanager
def served(db: Path) -> Iterator[str]:
    """The app serving ``db``, as its base URL; stopped on leaving."""
    port = _free_port()
    proc = serve(db, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian chromium (.ci/run installs it)"
)


@pytest.fixture
def server(pipeline_db):
    with served(pipeline_db) as url:
        yield url


@needs_chromium
def test_map_page_draws_every_point(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{server}/map")
        page.wait_for_selector(
            ".js-plotly-plot .scatterlayer, .js-plotly-plot canvas", timeout=90_000
        )
        n_points = page.wait_for_function(
            """() => {
                const gd = document.querySelector('.js-plotly-plot');
                if (!gd || !gd.data) return 0;
                return (gd._fullData || []).reduce((a, t) => a + (t._length || 0), 0);
            }""",
            timeout=30_000,
        ).json_value()
        page.screenshot(path=str(tmp_path / "map.png"), full_page=True)
        assert n_points == PIPELINE_ROWS
        assert page.get_by_text("Clusters").first.is_visible()
        assert not page.locator("[data-testid='stException']").count()
        browser.close()
    assert not errors, errors


@pytest.fixture
def rewards_server(rewards_db):
    with served(rewards_db) as url:
        yield url


@needs_chromium
def test_rewards_page_draws_the_scatter_and_the_pairs(rewards_server, rewards_db, tmp_path):
    from playwright.sync_api import sync_playwright

    from core.store import Store

    roles = Store(rewards_db).reward_candidates("prefs").column("role").to_pylist()
    n_responses, n_pairs = len(roles), roles.count("rejected")  # a pair per rejected response
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 4000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{rewards_server}/rewards")
        # (points in the A-vs-B scatter, arrows on the map) once both figures are drawn
        drawn = page.wait_for_function(
            """() => {
                const figs = Array.from(document.querySelectorAll('.js-plotly-plot'));
                const byMeta = m => figs.find(g => g._fullLayout && g._fullLayout.meta === m);
                const scatter = byMeta('rewards-scatter'), pairs = byMeta('rewards-pairs');
                if (!scatter || !pairs) return null;
                const points = scatter._fullData.reduce((a, t) => a + (t._length || 0), 0);
                const arrows = pairs._fullData
                    .filter(t => t.mode === 'lines+markers')
                    .reduce((a, t) => a + (t._length || 0) / 3, 0);
                const paths = pairs.querySelectorAll('.scatterlayer path.js-line').length;
                return points && arrows && paths ? [points, arrows, paths] : null;
            }""",
            timeout=90_000,
        ).json_value()
        page.screenshot(path=str(tmp_path / "rewards.png"), full_page=True)
        points, arrows, paths = drawn
        assert points == n_responses
        assert arrows == min(300, n_pairs)  # the slider's default cap is 300 pairs
        assert paths >= 1  # the SVG lines are drawn, not only declared
        assert page.get_by_text("How each source judges the preferences").is_visible()
        assert not page.locator("[data-testid='stException']").count()
        assert not page.locator("[data-testid='stAlertContentError']").count()
        browser.close()
    assert not errors, errors
