"""GET /logs: the supervisor's log and the engines' output, per model, as text or NDJSON, and followed live; a
followed stream does not hold up shutdown."""

from __future__ import annotations

import json
import signal
import time

import requests

from harness import wait_until


def test_logs_show_supervisor_and_engine_lines_per_model(sup):
    assert sup.chat(max_tokens=2).status_code == 200
    # llama-server's own output: read in bursts (the reader lets the pipe fill for 20 ms between reads).
    wait_until(lambda: " engine [ai/tiny:latest] " in sup.get("/logs").text, 2.0, "the engine's lines in /logs")
    text = sup.get("/logs").text
    assert " INFO  listening addr=" in text, text[-2000:]
    only = sup.get("/logs", params={"model": "ai/tiny", "tail": 1000}).text.splitlines()
    assert only and all("[ai/tiny:latest]" in line for line in only), only[:5]
    assert any("engine ready" in line for line in only)
    lines = [json.loads(line) for line in sup.get("/logs", params={"format": "json", "tail": 5}).text.splitlines()]
    assert len(lines) == 5 and all({"time", "level", "source", "message"} <= set(l) for l in lines), lines
    assert sup.get("/logs", params={"tail": "many"}).status_code == 400
    assert sup.get("/logs", params={"colour": "1"}).status_code == 400


def test_follow_streams_new_lines_and_ends_at_shutdown(sup):
    assert sup.chat(max_tokens=2).status_code == 200
    r = requests.get(sup.url("/logs"), params={"follow": "1", "tail": "0", "model": "ai/tiny"}, stream=True,
                     timeout=30)
    assert r.status_code == 200
    lines = r.iter_lines(decode_unicode=True)
    assert sup.post("/engines/unload", {"all": True}).json()["unloaded_runners"] == 1
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = next(lines)
        seen.append(line)
        if "engine stopped" in line:
            break
    assert "engine stopped" in seen[-1], seen
    started = time.monotonic()
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    # Well before shutdown_grace (10 s): the followed stream was ended, not waited for.
    assert time.monotonic() - started < 5
    r.close()
