"""An engine that dies or never starts: the client gets a clean error and the next request a new engine.

Timing note: at --ctx-size 8192 the tiny model streams 4000 tokens (ignore_eos) in 5-50 s on a 2-core machine
(llama-server's per-token cost grows with the generated length), while the first frame arrives within ~10 ms.
So an engine killed right after the first frame is always killed mid-generation.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import requests

from harness import assert_openai_error, pid_gone, wait_until

LONG = {"max_tokens": 4000, "ignore_eos": True}


def long_stream_body(**extra) -> dict:
    body = {"model": "ai/tiny", "stream": True, "messages": [{"role": "user", "content": "Hello"}], **LONG}
    body.update(extra)
    return body


def engine_busy(port: int) -> bool:
    slots = requests.get(f"http://127.0.0.1:{port}/slots", timeout=5).json()
    return any(s.get("is_processing") for s in slots)


def test_engine_killed_mid_stream(supervisors):
    sup = supervisors.start(models=[supervisors.tiny_model(context_size=8192)])
    s = sup.stream("/engines/v1/chat/completions", long_stream_body(), timeout=30)
    try:
        assert s.status == 200
        first = s.next_data()
        assert first and first != "[DONE]", first
        assert json.loads(first)["object"] == "chat.completion.chunk", first
        [spawn] = sup.spawns()
        os.kill(spawn.pid, signal.SIGKILL)
        frames = s.rest()
    finally:
        s.close()

    assert frames, f"the stream ended without an error frame (transport: {s.transport_error!r})"
    assert "[DONE]" not in frames, frames[-3:]
    parsed = [json.loads(f) for f in frames]
    errors = [p for p in parsed if "error" in p]
    assert len(errors) == 1, f"expected one error frame, got {len(errors)}: {errors}"
    assert parsed[-1] is errors[0], f"the error frame must be the last one: {frames[-3:]}"
    err = errors[0]["error"]
    assert err["type"] == "server_error" and err["code"] == 502, err
    assert isinstance(err["message"], str) and err["message"], err
    assert all(p.get("object") == "chat.completion.chunk" for p in parsed[:-1])

    wait_until(lambda: pid_gone(spawn.pid), 5.0, f"killed engine pid {spawn.pid} to be reaped")
    wait_until(lambda: all(p["pid"] != spawn.pid for p in sup.ps()), 5.0, "the dead runner to be dropped")

    r = sup.chat(max_tokens=4)
    assert r.status_code == 200, r.text
    spawns = sup.spawns()
    assert len(spawns) == 2 and spawns[1].pid != spawn.pid, spawns
    assert [p["pid"] for p in sup.ps()] == [spawns[1].pid]


def test_engine_killed_during_non_streaming_request(supervisors):
    sup = supervisors.start(models=[supervisors.tiny_model(context_size=8192)])
    assert sup.chat(max_tokens=2).status_code == 200  # load the engine first
    [spawn] = sup.spawns()

    result: dict = {}

    def long_request():
        try:
            result["r"] = sup.chat(**LONG)
        except Exception as e:  # surfaced by the assertions below
            result["e"] = e

    t = threading.Thread(target=long_request, daemon=True)
    t.start()
    # In flight at the engine: llama-server's own /slots says a slot is generating.
    wait_until(lambda: engine_busy(spawn.port), 20.0, "the engine to be generating")
    # Well into its work: a request that fails within a few ms of being sent is taken to have met an engine
    # already dead, and is sent again to a fresh one (test_a_request_right_after_the_engine_dies_...).
    time.sleep(0.1)
    os.kill(spawn.pid, signal.SIGKILL)
    t.join(30)
    assert not t.is_alive(), "the in-flight request did not finish after the engine died"
    assert "e" not in result, result.get("e")
    assert_openai_error(result["r"], 502, "server_error")

    wait_until(lambda: pid_gone(spawn.pid), 5.0, f"killed engine pid {spawn.pid} to be reaped")
    r = sup.chat(max_tokens=4)
    assert r.status_code == 200, r.text
    spawns = sup.spawns()
    assert len(spawns) == 2 and spawns[1].pid != spawn.pid, spawns


def test_engine_with_bad_flag_is_502_with_its_stderr(supervisors):
    sup = supervisors.start(models=[supervisors.tiny_model(runtime_flags=["--no-such-flag"])])
    r = sup.chat(max_tokens=2)
    err = assert_openai_error(r, 502)
    assert "--no-such-flag" in err["message"], err  # llama-server: "error: invalid argument: --no-such-flag"
    [spawn] = sup.spawns()
    assert pid_gone(spawn.pid)
    assert sup.ps() == []
    # not cached as a permanent failure: the next request tries again
    r = sup.chat(max_tokens=2)
    assert r.status_code == 502
    assert len(sup.spawns()) == 2


def test_missing_engine_binary_is_502(supervisors, tmp_path):
    sup = supervisors.start(engine_binary=str(tmp_path / "no-such-llama-server"))
    r = sup.get("/engines/status")
    assert r.status_code == 200 and r.json()["llama.cpp"].startswith("Not Installed"), r.text
    r = sup.chat(max_tokens=2)
    assert_openai_error(r, 502)


def test_client_disconnect_cancels_the_engine_request(supervisors):
    # A client that goes away mid-stream must not leave the engine generating 4000 tokens for nobody: the
    # supervisor drops the upstream connection and llama-server stops the slot.
    sup = supervisors.start(models=[supervisors.tiny_model(context_size=8192)])
    s = sup.stream("/engines/v1/chat/completions", long_stream_body(), timeout=30)
    first = s.next_data()
    assert first and first != "[DONE]", first
    [runner] = sup.ps()
    assert runner["in_use"] is True, runner
    assert engine_busy(runner["port"]), "the engine is generating while the client reads"
    s.close()
    wait_until(lambda: not engine_busy(runner["port"]), 5.0, "the engine to stop generating after the disconnect")
    wait_until(lambda: sup.ps()[0]["in_use"] is False, 5.0, "the runner to be released")
    # The same engine serves the next request.
    assert sup.chat(max_tokens=4).status_code == 200
    assert len(sup.spawns()) == 1


def test_a_hung_engine_is_killed_and_replaced_and_its_request_gets_504(supervisors):
    sup = supervisors.start(scheduler={"health_interval": "300ms"})
    assert sup.chat(max_tokens=2).status_code == 200
    [hung] = sup.spawns()
    os.kill(hung.pid, signal.SIGSTOP)  # wedged: accepts connections (the kernel does), answers nothing
    try:
        started = time.monotonic()
        r = sup.chat(max_tokens=2)
        err = assert_openai_error(r, 504, "server_error")
        assert "stopped responding to its health checks" in err["message"], err
        # Three failed checks, 300 ms apart, each allowed 300 ms.
        assert time.monotonic() - started < 5
        # At once, while the wedged engine is still being killed, the next request gets a new engine: the
        # scheduler dropped the old one before answering 504.
        r = sup.chat(max_tokens=2)
        assert r.status_code == 200, r.text
        wait_until(lambda: pid_gone(hung.pid), 5, "the hung engine to be killed")
    finally:
        if not pid_gone(hung.pid):
            os.kill(hung.pid, signal.SIGCONT)
    assert len(sup.spawns()) == 2
    assert "stopped answering its health checks; killing it" in sup.stderr_text()


STUBBORN = """#!/bin/sh
# An engine that ignores SIGTERM and leaves a grandchild that ignores it too; the real engine runs as its child.
trap '' TERM
sh -c 'trap "" TERM; exec sleep 1000' &
echo $! > {grandchild}
{wrapper} "$@" &
while :; do sleep 1; done
"""


def test_an_engine_that_ignores_sigterm_and_leaves_a_grandchild_is_killed_with_its_group(supervisors, tmp_path):
    grandchild = tmp_path / "grandchild.pid"
    engine = tmp_path / "stubborn.sh"
    engine.write_text(STUBBORN.format(grandchild=grandchild, wrapper=tmp_path / "stubborn" / "llama-server-wrapper.sh"))
    engine.chmod(0o755)
    sup = supervisors.start(name="stubborn", engine_binary=str(engine), scheduler={"stop_timeout": "1s"})
    assert sup.chat(max_tokens=2).status_code == 200
    [ps] = sup.ps()
    leader, real, orphan = ps["pid"], sup.spawns()[0].pid, int(grandchild.read_text())
    assert all(not pid_gone(p) for p in (leader, real, orphan))
    started = time.monotonic()
    assert sup.post("/engines/unload", {"all": True}).json()["unloaded_runners"] == 1
    # SIGTERM is ignored; after stop_timeout the whole process group gets SIGKILL.
    assert 0.9 < time.monotonic() - started < 5
    wait_until(lambda: all(pid_gone(p) for p in (leader, real, orphan)), 5, "every process of the engine's group to go")


PORT_THIEF = """#!/bin/sh
# On the first start, another process takes the engine's port just before the engine binds it.
port=""
prev=""
for a in "$@"; do [ "$prev" = "--port" ] && port=$a; prev=$a; done
if [ ! -f {mark} ]; then
  touch {mark}
  {python} -c 'import socket, sys, time; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(60)' "$port" &
  sleep 0.5
fi
exec {wrapper} "$@"
"""


def test_a_port_taken_before_the_engine_binds_it_is_retried_on_another(supervisors, tmp_path):
    engine = tmp_path / "thief.sh"
    engine.write_text(PORT_THIEF.format(mark=tmp_path / "stolen", python=sys.executable,
                                        wrapper=tmp_path / "thief" / "llama-server-wrapper.sh"))
    engine.chmod(0o755)
    sup = supervisors.start(name="thief", engine_binary=str(engine))
    r = sup.chat(max_tokens=2)
    assert r.status_code == 200, r.text
    first, second = sup.spawns()
    assert first.port != second.port
    assert "the engine's port was taken; starting it on another one" in sup.stderr_text()


def test_a_request_right_after_the_engine_dies_is_served_by_a_fresh_one(supervisors):
    """The moment between an engine's death and the scheduler hearing of it: a request granted the dead runner
    cannot connect, and is planned and sent again on a fresh runner instead of failing with a 502."""
    sup = supervisors.start()
    for _ in range(5):
        assert sup.chat(max_tokens=2).status_code == 200
        spawn = sup.spawns()[-1]
        os.kill(spawn.pid, signal.SIGKILL)
        r = sup.chat(max_tokens=2)  # at once: often granted before the death is known
        assert r.status_code == 200, r.text
        assert sup.spawns()[-1].pid != spawn.pid
    renewed = sup.stderr_text().count("sending it to a fresh one")
    print(f"{renewed} of 5 requests met the dead engine and were sent again")
