"""Idle runners unload by themselves after keep_alive; /engines/unload stops idle runners on demand."""

from __future__ import annotations

import time

from harness import pid_gone, wait_until


def test_idle_runner_unloads_after_keep_alive(supervisors):
    sup = supervisors.start(models=[supervisors.tiny_model(keep_alive="1s")])
    r = sup.chat(max_tokens=2)
    answered = time.monotonic()
    assert r.status_code == 200, r.text
    [spawn] = sup.spawns()
    ps = sup.ps()
    assert len(ps) == 1 and ps[0]["pid"] == spawn.pid and ps[0]["keep_alive"] == "1s", ps

    # 1 s idle, plus the scheduler's tick and the engine's SIGTERM handling
    wait_until(lambda: pid_gone(spawn.pid), 8.0, f"engine pid {spawn.pid} to exit after keep_alive=1s")
    # ... and not before: the runner was last used before the answer reached us, so it lives on for at least
    # keep_alive after that, less the time the answer took to travel back (a few ms; 100 ms allowed).
    idle_for = time.monotonic() - answered
    assert idle_for >= 0.9, f"the runner stopped {idle_for:.2f}s after its last request, before keep_alive=1s"
    wait_until(lambda: sup.ps() == [], 3.0, "/engines/ps to be empty")
    assert sup.alive()

    # the model still serves: a new engine is started on demand
    r = sup.chat(max_tokens=2)
    assert r.status_code == 200, r.text
    spawns = sup.spawns()
    assert len(spawns) == 2 and spawns[1].pid != spawn.pid, spawns


def test_default_keep_alive_keeps_the_runner(sup):
    r = sup.chat(max_tokens=2)
    assert r.status_code == 200, r.text
    [spawn] = sup.spawns()
    # A second request a moment later reuses it (no sleep needed: 5m keep-alive).
    assert sup.chat(max_tokens=2).status_code == 200
    assert len(sup.spawns()) == 1 and not pid_gone(spawn.pid)


def test_unload_endpoint(sup):
    assert sup.chat(max_tokens=2).status_code == 200
    [spawn] = sup.spawns()
    r = sup.post("/engines/unload", {"models": ["ai/tiny"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"unloaded_runners": 1}, r.text
    wait_until(lambda: pid_gone(spawn.pid), 8.0, f"engine pid {spawn.pid} to exit after unload")
    assert sup.ps() == []
    r = sup.post("/engines/unload", {"all": True})
    assert r.status_code == 200 and r.json() == {"unloaded_runners": 0}, r.text


def test_max_keep_alive_caps_what_clients_ask_for(supervisors):
    """`[scheduler] max_keep_alive`: a request's "-1" (forever) or "1h", and a `_configure` keep-alive, are cut to
    the cap; a shorter one stays; the keep-alive set in the config file is the admin's and is not cut."""
    sup = supervisors.start(scheduler={"max_keep_alive": "2s"})
    chat = {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False,
            "options": {"num_predict": 1}}
    assert sup.post("/api/chat", {**chat, "keep_alive": -1}).status_code == 200
    [spawn] = sup.spawns()
    answered = time.monotonic()
    assert [p["keep_alive"] for p in sup.ps()] == ["2s"], sup.ps()
    wait_until(lambda: pid_gone(spawn.pid), 10.0, "the runner asked to stay forever to go after the 2 s cap")
    assert time.monotonic() - answered >= 1.8
    assert sup.post("/api/chat", {**chat, "keep_alive": "1s"}).status_code == 200
    assert [p["keep_alive"] for p in sup.ps()] == ["1s"], "shorter than the cap: kept as asked"
    assert sup.post("/engines/unload", {"all": True}).status_code == 200
    r = sup.post("/engines/_configure", {"model": "ai/tiny", "keep_alive": "1h"})
    assert r.status_code == 202, r.text
    wait_until(lambda: [p["keep_alive"] for p in sup.ps()] == ["2s"], 10.0, "the configured preload capped at 2s")

    admin = supervisors.start(models=[supervisors.tiny_model(keep_alive="10m")], scheduler={"max_keep_alive": "2s"})
    assert admin.chat(max_tokens=1).status_code == 200
    assert [p["keep_alive"] for p in admin.ps()] == ["10m0s"], "the config file's own keep-alive is not capped"
