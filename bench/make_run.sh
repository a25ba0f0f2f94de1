#!/usr/bin/env bash
# Seconds from `make run` on a fresh clone (no .venv, no demo database) until the app answers,
# and until the Map page has drawn every demo point in Chromium.
#
#     bash bench/make_run.sh
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
PORT=${PORT:-8599}
git clone -q "$SRC" "$TMP/repo"
cd "$TMP/repo"
start=$(date +%s.%N)
setsid make run PORT="$PORT" >"$TMP/run.log" 2>&1 &
pid=$!
trap 'kill -- -$pid 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/_stcore/health" >/dev/null; do
    sleep 1
    kill -0 "$pid" 2>/dev/null || { tail -40 "$TMP/run.log"; exit 1; }
done
answered=$(date +%s.%N)
venv_done=$(stat -c %Y .venv/.installed)
demo_done=$(stat -c %Y data/demo.duckdb)
"$TMP/repo/.venv/bin/python" - "$PORT" <<'PY'
import sys, time
from playwright.sync_api import sync_playwright
sys.path.insert(0, ".")
from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS
port = sys.argv[1]
with sync_playwright() as p:
    b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = b.new_page()
    t = time.perf_counter()
    page.goto(f"http://127.0.0.1:{port}/map")
    n = page.wait_for_function("""() => { const gd = document.querySelector('.js-plotly-plot');
        return gd && gd._fullData && gd._fullData.reduce((a, t) => a + (t._length || 0), 0); }""",
        timeout=120000).json_value()
    print(f"map drawn with {n} points {time.perf_counter() - t:.1f} s after opening /map")
    b.close()
PY
python3 - "$start" "$venv_done" "$demo_done" "$answered" <<'PY'
import sys
start, venv, demo, answered = map(float, sys.argv[1:])
print(f"venv + pip install: {venv - start:6.1f} s")
print(f"demo build:         {demo - venv:6.1f} s")
print(f"app answers:        {answered - start:6.1f} s after `make run` (total)")
PY
