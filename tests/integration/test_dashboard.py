"""The dashboard in headless Chromium (Debian's chromium driven by playwright-core, see tests/browser/): it shows the
loaded model, the memory bar, the recorded request with its details once clicked, and the logs. The screenshot is
kept at target/test-artifacts/dashboard.png. `scripts/browser-env.sh` installs the browser and the driver."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import REPO

PROMPT = "hello from the dashboard test"


def test_the_dashboard_shows_models_memory_requests_and_logs(sup):
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    driver = REPO / "tests/browser/node_modules/playwright-core"
    if not Path(chromium).exists() or not driver.exists() or shutil.which("node") is None:
        pytest.fail(f"run `{REPO}/scripts/browser-env.sh` first (chromium at {chromium}, playwright-core, node)",
                    pytrace=False)
    r = sup.post("/engines/v1/chat/completions",
                 {"model": "ai/tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4})
    assert r.status_code == 200
    page = sup.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    shot = REPO / "target/test-artifacts/dashboard.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["node", str(REPO / "tests/browser/dashboard.mjs"), sup.base, str(shot), PROMPT],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "CHROMIUM": chromium})
    assert p.returncode == 0, p.stdout + p.stderr
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    assert "ai/tiny:latest" in seen["model"] and "ready" in seen["model"], seen
    assert seen["promptShown"], seen["details"]
    assert seen["errors"] == [], seen["errors"]
    assert shot.stat().st_size > 10_000
