"""Three supervisors behind the real vLLM Router (`vllm-router` 0.1.17 from PyPI; issue 16, item 6).

Each supervisor has its own port, store and llama-server (the tiny model, `--temp 0`), started by the harness; the
router is the vLLM project's own binary with static `--worker-urls`. Where a request went is read from each
supervisor's own `dmr_requests_total`, not from the router. Health checks go to `/readyz` every second with one
failure enough (`--health-check-endpoint /readyz --health-check-interval-secs 1 --health-failure-threshold 1`;
test_sigterm also holds `/health`, the router's default, to the same 503), and a circuit breaker that retries a
failed worker after 3 s (`--cb-timeout-duration-secs 3`): the settings docs/scale-out.md recommends, and what
bounds the time to notice a dead box, and to use it again, here.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid

import pytest
import requests

from cluster import Load, Router, find_router, free_port, node_chats, prom_samples
from harness import figure, pid_gone, wait_until

HEALTH = ["--health-check-endpoint", "/readyz", "--health-check-interval-secs", "1",
          "--health-failure-threshold", "1", "--health-success-threshold", "1", "--health-check-timeout-secs", "1",
          # Failed requests open a worker's circuit breaker (10 failures); it stays open 60 s by default, even once
          # the worker's health checks pass again: a box back from a crash would sit idle for a minute.
          "--cb-timeout-duration-secs", "3"]


@pytest.fixture(scope="session")
def router_bin():
    return find_router()


@pytest.fixture
def routers(tmp_path, router_bin):
    started: list[Router] = []

    def start(nodes, policy: str, extra: list[str] | None = None) -> Router:
        r = Router(router_bin, [n.base for n in nodes], policy, tmp_path / f"router-{len(started)}.log",
                   HEALTH + (extra or []))
        started.append(r)
        return r.start()

    yield start
    for r in started:
        r.stop()


def start_nodes(supervisors, n: int = 3, server: dict | None = None) -> list:
    """`n` supervisors on fixed free ports (so one can come back on its port), each with its engine loaded. One
    engine thread each: three llama-servers spinning two threads each on a 2-core machine would measure nothing
    but their contention."""
    model = supervisors.tiny_model(runtime_flags=["--temp", "0", "--threads", "1", "--threads-batch", "1"])
    nodes = [supervisors.start(server={"listen": f"127.0.0.1:{free_port()}", **(server or {})}, models=[model],
                               name=f"node{i}") for i in range(n)]
    for node in nodes:
        r = node.chat(max_tokens=1)
        assert r.status_code == 200, r.text
    return nodes


def counts(nodes) -> list[int]:
    return [node_chats(n) for n in nodes]


def delta(before: list[int], after: list[int]) -> list[int]:
    return [a - b for a, b in zip(after, before)]


def test_round_robin_and_power_of_two_spread_over_all_three_with_correct_answers(supervisors, routers):
    nodes = start_nodes(supervisors)
    want = nodes[0].post("/v1/chat/completions", {"model": "ai/tiny", "max_tokens": 8,
                                                  "messages": [{"role": "user", "content": "spread"}]}).json()
    want_text = want["choices"][0]["message"]["content"]

    rr = routers(nodes, "round_robin")
    models = requests.get(rr.base + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["ai/tiny:latest"], models

    before = counts(nodes)
    for _ in range(30):
        r = rr.chat("spread")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"] == want_text, body  # same model, temperature 0
        assert body["model"] == "ai/tiny:latest" and body["usage"]["completion_tokens"] == 8, body
    assert delta(before, counts(nodes)) == [10, 10, 10]  # round robin: exactly a third each

    # vLLM's ORCA load report comes back through the router, for an ORCA-aware proxy or client in front of it.
    for fmt in ("json", "text"):
        r = rr.chat("spread", headers={"endpoint-load-metrics-format": fmt})
        report = r.headers.get("endpoint-load-metrics", "")
        assert r.status_code == 200 and report.startswith(fmt.upper() + " "), (fmt, r.headers)
    named = json.loads(rr.chat("spread", headers={"endpoint-load-metrics-format": "json"})
                       .headers["endpoint-load-metrics"][len("JSON "):])["named_metrics"]
    assert named["num_requests_running"] >= 1 and named["num_requests_waiting"] >= 0, named  # it counts itself
    assert 0 <= named["kv_cache_usage_perc"] <= 1, named
    rr.stop()

    p2 = routers(nodes, "power_of_two", ["--worker-startup-check-interval", "1"])
    before = counts(nodes)
    with Load(p2, threads=4, max_tokens=8, prompt="spread") as load:
        wait_until(lambda: load.done() >= 90, 60, "90 requests through power_of_two")
    spread = delta(before, counts(nodes))
    assert not load.failures(), load.failures()[:3]
    assert all(o.content == want_text for o in load.outcomes), [o.content for o in load.outcomes][:5]
    assert sum(spread) == load.done(), (spread, load.done())
    assert all(n >= load.done() // 10 for n in spread), f"power_of_two left a node nearly idle: {spread}"
    figure("cluster.p2c_spread", "/".join(map(str, spread)))


def test_consistent_hash_keeps_a_conversation_on_one_node_whose_prompt_cache_it_hits(supervisors, routers):
    nodes = start_nodes(supervisors)
    ch = routers(nodes, "consistent_hash")
    homes = []
    for i in range(8):
        session = {"x-session-id": f"conversation-{uuid.uuid4()}"}
        # A unique opening, so no other conversation shares a prefix with this one on any node.
        first = [{"role": "user", "content": f"{uuid.uuid4().hex} tell me a long story about the sea, ships "
                                             f"and the people who sail them, number {i}"}]
        before = counts(nodes)
        r1 = ch.chat("", messages=first, headers=session)
        assert r1.status_code == 200, r1.text
        d1 = delta(before, counts(nodes))
        assert sorted(d1) == [0, 0, 1], d1
        home = d1.index(1)

        second = first + [r1.json()["choices"][0]["message"], {"role": "user", "content": "And then?"}]
        before = counts(nodes)
        r2 = ch.chat("", messages=second, headers=session)
        assert r2.status_code == 200, r2.text
        d2 = delta(before, counts(nodes))
        assert d2 == d1, f"turn 2 went to node {d2.index(1)}, turn 1 to node {home}"
        cached = r2.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached >= 0.8 * r1.json()["usage"]["prompt_tokens"], r2.json()["usage"]

        # The same turn on another node pays the whole prompt: the cache is the home node's alone.
        other = nodes[(home + 1) % 3]
        r3 = other.post("/v1/chat/completions", {"model": "ai/tiny", "max_tokens": 8, "messages": second})
        assert r3.json()["usage"]["prompt_tokens_details"]["cached_tokens"] < cached / 2, r3.json()["usage"]
        homes.append(home)
    assert len(set(homes)) >= 2, f"eight conversations all hashed to node {homes[0]}"
    figure("cluster.consistent_hash_homes", "".join(map(str, homes)))


def test_sigkill_one_node_under_load(supervisors, routers):
    nodes = start_nodes(supervisors)
    victim = nodes[1]
    engine_pids = [s.pid for s in victim.spawns()]
    assert engine_pids and not any(pid_gone(p) for p in engine_pids)
    rr = routers(nodes, "round_robin")
    with Load(rr, threads=3, max_tokens=32) as load:
        wait_until(lambda: load.done() >= 30, 30, "30 requests before the kill")
        assert not load.failures(), load.failures()[:3]
        t_kill = time.monotonic()
        victim.signal(signal.SIGKILL)
        # Its engine dies with it (PR_SET_PDEATHSIG): no orphan llama-server.
        wait_until(lambda: all(pid_gone(p) for p in engine_pids), 5, f"engine pid(s) {engine_pids} to die")
        t_engine = time.monotonic()
        wait_until(lambda: victim.base not in rr.healthy_workers(), 10, "the router to mark the killed node down")
        t_noticed = time.monotonic()
        victim.wait_exit(5)
        n_down = load.done()
        wait_until(lambda: load.done() >= n_down + 30, 30, "30 requests while the node is down")

        # It comes back on its port, with its store: the router takes it in again. (The killed one's engine log
        # moves aside, so the teardown's orphan check holds each supervisor to its own engines.)
        victim.wrapper_log = victim.wrapper_log.rename(victim.wrapper_log.with_suffix(".killed.log"))
        back = supervisors.start_with(victim.config_path, victim.store, victim.config_path.parent / "engine-spawns.log")
        t_back = time.monotonic()
        wait_until(lambda: back.base in rr.healthy_workers(), 15, "the router to see the node back")
        t_readmitted = time.monotonic()
        wait_until(lambda: node_chats(back) >= 5, 30, "requests on the restarted node")
        t_used = time.monotonic()
    failed = load.failures()
    in_flight = [o for o in failed if o.start <= t_kill]
    after = [o for o in failed if o.start > t_kill]
    figure("cluster.sigkill_noticed_s", f"{t_noticed - t_kill:.2f}")
    figure("cluster.sigkill_engine_gone_s", f"{t_engine - t_kill:.2f}")
    retried = sum(prom_samples(rr.prometheus(), "vllm_router_retries_total").values())
    figure("cluster.sigkill_failed", f"{len(failed)} of {len(load.outcomes)} ({retried:.0f} retried by the router)")
    figure("cluster.restart_readmitted_s", f"{t_readmitted - t_back:.2f}")
    figure("cluster.restart_used_s", f"{t_used - t_back:.2f}")
    # One health check period plus its timeout (1 s each), with a margin for a loaded CI machine.
    assert t_noticed - t_kill < 4.0, "the router took more than 4 s to stop using a dead node"
    assert len(in_flight) <= 3, f"more failures than requests in flight: {in_flight}"
    assert not after, f"requests sent after the kill failed: {after[:3]}"
    assert sum(1 for o in load.outcomes if o.start > t_kill and o.status == 200) >= 30


def test_sigkill_without_router_retries_fails_only_what_reached_the_dead_node(supervisors, routers):
    """The same crash with the router's retries off (`--disable-retries`): what fails is what was on the dead box or
    sent to it before the router noticed; nothing sent after that fails."""
    nodes = start_nodes(supervisors)
    victim = nodes[0]
    rr = routers(nodes, "round_robin", ["--disable-retries"])
    with Load(rr, threads=3, max_tokens=32) as load:
        wait_until(lambda: load.done() >= 30 and node_chats(victim) >= 10, 30, "30 requests before the kill")
        t_kill = time.monotonic()
        victim.signal(signal.SIGKILL)
        wait_until(lambda: victim.base not in rr.healthy_workers(), 10, "the router to mark the killed node down")
        t_noticed = time.monotonic()
        n = load.done()
        wait_until(lambda: load.done() >= n + 60, 30, "60 requests after the router noticed")
    failed = load.failures()
    late = [o for o in failed if o.start > t_noticed]
    figure("cluster.sigkill_no_retries_failed",
           f"{len(failed)} of {len(load.outcomes)}, all sent in the {t_noticed - t_kill:.2f} s "
           "before the router noticed")
    assert failed, "a SIGKILLed box failed nothing: the kill did not hit a box under load"
    assert all(o.start < t_noticed for o in failed) and not late, f"failed after the router noticed: {late[:3]}"
    # Round robin keeps sending a third of the load to the dead box until it is noticed: about that many fail.
    sent_before = sum(1 for o in load.outcomes if t_kill - 0.5 <= o.start < t_noticed)
    assert len(failed) <= sent_before / 3 + 3 + 1, (len(failed), sent_before)
    assert sum(1 for o in load.outcomes if o.start > t_noticed and o.status == 200) >= 60


def test_sigterm_one_node_under_load_drains_without_a_failed_request(supervisors, routers):
    """The drain of issue 16 item 3: `/readyz` and `/health` 503 at once on SIGTERM, serving on for `[server]
    drain_delay` (3 s: over the router's 1 s check + 1 s timeout). The router retries nothing here
    (`--disable-retries`): zero failures is the drain's doing, not the router's."""
    nodes = start_nodes(supervisors, server={"drain_delay": "3s"})
    victim = nodes[2]
    r = victim.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}, (r.status_code, r.text)
    engine_pids = [s.pid for s in victim.spawns()]
    rr = routers(nodes, "round_robin", ["--disable-retries"])
    with Load(rr, threads=3, max_tokens=32) as load:
        wait_until(lambda: load.done() >= 30 and node_chats(victim) >= 10, 30, "30 requests before SIGTERM")
        t_term = time.monotonic()
        victim.signal(signal.SIGTERM)
        wait_until(lambda: victim.get("/readyz", timeout=2).status_code == 503, 1, "/readyz to turn 503")
        assert victim.get("/health", timeout=2).status_code == 503
        assert victim.get("/livez", timeout=2).status_code == 200
        wait_until(lambda: victim.base not in rr.healthy_workers(), 5, "the router to mark the draining node down")
        t_noticed = time.monotonic()
        assert victim.alive(), "the node stopped before the router had noticed it was draining"
        rc = victim.wait_exit(30)
        t_exit = time.monotonic()
        n = load.done()
        wait_until(lambda: load.done() >= n + 30, 30, "30 requests after the node left")
    figure("cluster.sigterm_noticed_s", f"{t_noticed - t_term:.2f}")
    figure("cluster.sigterm_exit_s", f"{t_exit - t_term:.2f}")
    assert rc == 0
    assert all(pid_gone(p) for p in engine_pids)
    assert not load.failures(), f"{len(load.failures())} failed: {load.failures()[:3]}"


def test_power_of_two_reads_each_nodes_load(supervisors, routers):
    """vLLM Router's power_of_two polls each worker's `GET /get_load` (`{"load": N}`) every
    `--worker-startup-check-interval` seconds; `/get_loads` on the router shows what it read (-1: nothing)."""
    nodes = start_nodes(supervisors)
    for n in nodes:
        r = n.get("/get_load")
        assert r.status_code == 200 and r.json() == {"load": 0}, (n.base, r.status_code, r.text)
    p2 = routers(nodes, "power_of_two", ["--worker-startup-check-interval", "1"])
    assert p2.loads() == {n.base: 0 for n in nodes}
    for _ in range(6):
        assert p2.chat("load?").status_code == 200
    # Its own log shows the figures the policy compared, read from our nodes.
    picks = [line for line in p2.log_text().splitlines() if "Power-of-two selection" in line]
    assert len(picks) >= 6, p2.log_text()[-3000:]
    assert all(any(n.base + "=0" in line for n in nodes) for line in picks), picks[:3]


def test_api_keys_pass_through_the_router_and_probes_need_none(supervisors, routers):
    """Boxes with `[server] api_keys`: the router health-checks `/readyz` without a key, and passes the client's
    key to the box. Its own `--api-key` is not added to proxied requests (vllm-router 0.1.17), so clients carry
    theirs; a request without one gets the box's 401 back."""
    model = supervisors.tiny_model(runtime_flags=["--temp", "0", "--threads", "1"])
    nodes = [supervisors.start(server={"api_keys": ["sk-fleet"]}, models=[model], name=f"keyed{i}")
             for i in range(2)]
    for node in nodes:  # the test's own reads of /metrics need the key too
        node.session.headers["Authorization"] = "Bearer sk-fleet"
    rr = routers(nodes, "round_robin", ["--api-key", "sk-fleet"])  # starts only once both pass /readyz unkeyed
    body = {"model": "ai/tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    anonymous = requests.post(rr.base + "/v1/chat/completions", json=body, timeout=30)
    assert anonymous.status_code == 401 and "API key" in anonymous.json()["error"]["message"], anonymous.text
    before = counts(nodes)
    for _ in range(4):
        r = requests.post(rr.base + "/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": "Bearer sk-fleet"})
        assert r.status_code == 200, r.text
    assert delta(before, counts(nodes)) == [2, 2]


SLOW_ENGINE = """#!/bin/sh
# llama-server that takes {delay} s to start: requests for a model that is not loaded yet wait on this node.
sleep {delay}
line="$$"
for a in "$@"; do line="$line $a"; done
printf '%s\\n' "$line" >> {log}
exec {real} "$@"
"""


def test_power_of_two_steers_away_from_a_node_with_waiting_requests(supervisors, routers, tmp_path):
    """Requests queued on node 0 (waiting for a slow engine start) show in its `/get_load`; power_of_two, which
    polls it every second, then sends none of the next requests there. Without our figure it would send node 0
    about a third of them (its own in-flight counts are all zero: the queued requests did not go through it)."""
    slow = tmp_path / "slow-llama-server.sh"
    slow.write_text(SLOW_ENGINE.format(delay=4, log=tmp_path / "node0" / "engine-spawns.log",
                                       real=supervisors.prereqs.llama_server))
    slow.chmod(0o755)
    flags = ["--temp", "0", "--threads", "1"]
    tiny, tiny2 = supervisors.tiny_model(runtime_flags=flags), supervisors.other_tiny_model(runtime_flags=flags)
    nodes = [supervisors.start(server={"listen": f"127.0.0.1:{free_port()}"}, models=[tiny, tiny2], name=f"node{i}",
                               **({"engine_binary": str(slow)} if i == 0 else {})) for i in range(3)]
    for node in nodes:
        assert node.chat(max_tokens=1).status_code == 200  # ai/tiny loaded everywhere (node 0: 4 s)
    p2 = routers(nodes, "power_of_two", ["--worker-startup-check-interval", "1"])

    held = []

    def hold() -> None:  # ai/tiny2 is not loaded on node 0: each of these waits ~4 s for its engine
        held.append(nodes[0].chat(model="ai/tiny2", max_tokens=1).status_code)

    holders = [threading.Thread(target=hold) for _ in range(4)]
    for t in holders:
        t.start()
    wait_until(lambda: nodes[0].get("/get_load", timeout=2).json()["load"] >= 4, 3, "node 0 to report 4 waiting")
    wait_until(lambda: p2.loads()[nodes[0].base] >= 4, 3, "the router to read node 0's load")
    time.sleep(1.2)  # one poll of the router's load monitor after the queue formed
    before = counts(nodes)
    for _ in range(12):
        assert p2.chat("steer").status_code == 200
    spread = delta(before, counts(nodes))
    for t in holders:
        t.join(timeout=30)
    assert held == [200] * 4
    figure("cluster.p2c_steer_spread", "/".join(map(str, spread)))
    assert spread[0] == 0 and sum(spread) == 12, f"power_of_two sent node 0, with 4 queued, {spread[0]} of 12"


def test_model_aware_routing_sends_each_model_to_the_nodes_that_serve_it(supervisors, routers):
    """vLLM Router's multi-model mode (`--enable-igw`): workers join over its API (`POST /workers {"url"}`), and
    it learns the model each serves from the worker itself; requests go by their `model` field."""
    tiny = supervisors.tiny_model(runtime_flags=["--temp", "0", "--threads", "1"])
    tiny2 = supervisors.other_tiny_model(runtime_flags=["--temp", "0", "--threads", "1"])
    a = supervisors.start(models=[tiny], name="node-tiny")
    b = supervisors.start(models=[tiny2], name="node-tiny2")
    for node, model in ((a, "ai/tiny:latest"), (b, "ai/tiny2:latest")):  # each lists exactly what it serves
        assert [m["id"] for m in node.get("/v1/models").json()["data"]] == [model]
        assert [m["id"] for m in node.get("/engines/v1/models").json()["data"]] == [model]
    igw = routers([], "round_robin", ["--enable-igw"])
    for node in (a, b):
        r = requests.post(igw.base + "/workers", json={"url": node.base}, timeout=30)
        assert r.status_code == 200 and r.json()["success"], r.text
    workers = {w["url"]: w["model_id"] for w in requests.get(igw.base + "/workers", timeout=10).json()["workers"]}
    assert workers == {a.base: "ai/tiny:latest", b.base: "ai/tiny2:latest"}
    assert sorted(requests.get(igw.base + "/v1/models", timeout=10).json()["models"]) == \
        ["ai/tiny2:latest", "ai/tiny:latest"]

    before = counts([a, b])
    for model in ["ai/tiny:latest", "ai/tiny2:latest"] * 6:
        r = requests.post(igw.base + "/v1/chat/completions", timeout=60,
                          json={"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["model"] == model, r.text
    assert delta(before, counts([a, b])) == [6, 6]  # no request reached a node without its model
