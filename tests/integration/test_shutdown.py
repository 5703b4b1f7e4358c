"""Process hygiene: SIGTERM drains and stops engines; SIGKILL of the supervisor still takes engines down."""

from __future__ import annotations

import json
import signal
import time

import pytest

from harness import pid_gone, wait_until


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_with_loaded_runner_exits_0_and_stops_engine(sup, sig):
    assert sup.chat(max_tokens=2).status_code == 200
    assert sup.post("/engines/v1/embeddings", {"model": "ai/tiny", "input": "x"}).status_code == 200
    pids = [s.pid for s in sup.spawns()]
    assert len(pids) == 2 and not any(pid_gone(p) for p in pids)

    sup.signal(sig)
    rc = sup.wait_exit(15.0)
    assert rc == 0, f"exit code {rc} after {sig.name}"
    # engines are stopped and reaped before the supervisor exits
    wait_until(lambda: all(pid_gone(p) for p in pids), 1.0, f"engine pids {pids} to be gone")


def test_sigkill_of_supervisor_kills_engines(sup):
    assert sup.chat(max_tokens=2).status_code == 200
    assert sup.post("/engines/v1/embeddings", {"model": "ai/tiny", "input": "x"}).status_code == 200
    pids = [s.pid for s in sup.spawns()]
    assert len(pids) == 2

    sup.signal(signal.SIGKILL)
    sup.wait_exit(5.0)
    wait_until(lambda: all(pid_gone(p) for p in pids), 1.0, f"engine pids {pids} to die with the supervisor (PDEATHSIG)")


def test_sigterm_drains_an_in_flight_stream(supervisors):
    # 600 tokens take ~0.3 s on an idle 2-core machine and ~7 s under full CPU load: a roomy grace period.
    sup = supervisors.start(models=[supervisors.tiny_model(context_size=2048)], server={"shutdown_grace": "60s"})
    n = 600
    s = sup.stream("/engines/v1/chat/completions",
                   {"model": "ai/tiny", "stream": True, "max_tokens": n, "ignore_eos": True,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": "Hello"}]}, timeout=30)
    try:
        assert s.status == 200
        first = s.next_data()
        assert first and first != "[DONE]", first
        [spawn] = sup.spawns()
        sup.signal(signal.SIGTERM)
        frames = s.rest()
    finally:
        s.close()

    assert s.transport_error is None, f"stream cut during shutdown: {s.transport_error!r}"
    assert frames and frames[-1] == "[DONE]", frames[-3:]
    chunks = [json.loads(f) for f in frames[:-1]]
    assert not any("error" in c for c in chunks), [c for c in chunks if "error" in c]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage and usage[-1]["completion_tokens"] == n, usage  # the whole generation, not a truncated one

    rc = sup.wait_exit(30.0)
    assert rc == 0, rc
    wait_until(lambda: pid_gone(spawn.pid), 1.0, f"engine pid {spawn.pid} to be gone")


def test_sigterm_with_no_runner_exits_0_quickly(sup):
    assert sup.get("/models").status_code == 200
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(5.0) == 0


def test_sigterm_turns_not_ready_then_serves_out_the_drain_delay(supervisors):
    """What a router needs: on SIGTERM, /readyz and /health go 503 at once while /livez stays 200 and requests are
    still served for drain_delay; only then does the node stop accepting and exit."""
    sup = supervisors.start(server={"drain_delay": "3s"})
    for path, status in (("/livez", "alive"), ("/readyz", "ready"), ("/health", "ok")):
        r = sup.get(path)
        assert r.status_code == 200 and r.json() == {"status": status}, (path, r.status_code, r.text)
    assert sup.chat(max_tokens=2).status_code == 200
    t0 = time.monotonic()
    sup.signal(signal.SIGTERM)
    wait_until(lambda: sup.get("/readyz").status_code == 503, 1.0, "/readyz to turn 503")
    assert sup.get("/readyz").json() == {"status": "draining"}
    assert sup.get("/health").status_code == 503
    assert sup.get("/livez").status_code == 200
    served = 0
    while time.monotonic() - t0 < 2.0:
        r = sup.chat(max_tokens=2)
        assert r.status_code == 200, (r.status_code, r.text)
        served += 1
    assert served >= 1
    rc = sup.wait_exit(15.0)
    took = time.monotonic() - t0
    assert rc == 0, rc
    assert 3.0 <= took < 12.0, f"exited {took:.1f}s after SIGTERM with drain_delay 3s"


def test_sigint_skips_the_drain_delay(supervisors):
    sup = supervisors.start(server={"drain_delay": "30s"})
    assert sup.get("/readyz").status_code == 200
    t0 = time.monotonic()
    sup.signal(signal.SIGINT)
    assert sup.wait_exit(10.0) == 0
    assert time.monotonic() - t0 < 10.0
