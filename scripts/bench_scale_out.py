"""The scale-out benchmark's driver (scripts/bench-scale-out runs it; not a test).

In one run, with one engine kind at a time (a fast stand-in, then the real tiny model on llama-server):
  direct   wrk -> supervisor 0
  router1  wrk -> vLLM Router (round_robin) -> supervisor 0
  router3  wrk -> vLLM Router (round_robin) -> supervisors 0, 1, 2
interleaved over ROUNDS rounds (median of rounds reported), with wrk (C, one thread, 16 connections, keep-alive)
so the load generator costs little. Besides latency and throughput it reads the CPU time the router and
supervisor 0 spent (from /proc) per request, and what one /metrics scrape costs a supervisor: the per-box
figures the 100-box estimate in docs/benchmarks-scale-out.md is made of.

The fast stand-in is the project's own fake llama-server (tests/front.rs, a hyper server answering /health and
/v1/chat/completions like llama-server, in microseconds), started by the supervisor exactly as llama-server is.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests/integration"))

import requests  # noqa: E402

from cluster import Router, find_router  # noqa: E402
from harness import SupervisorFactory, find_prereqs  # noqa: E402

LUA = """wrk.method = "POST"
wrk.body = '{"model":"ai/tiny","messages":[{"role":"user","content":"Hello"}],"max_tokens":8%s}'
wrk.headers["Content-Type"] = "application/json"
"""
STREAM_FRAMES = 5  # the stand-in's stream: 3 content chunks, a usage chunk, [DONE]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def parse_ms(v: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]


def wrk(url: str, seconds: int, conns: int, lua: Path) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(lua),
                          url + "/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    if "50" not in lat or "99" not in lat:
        raise RuntimeError(f"no latency distribution in wrk's output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"p50": parse_ms(lat["50"]), "p99": parse_ms(lat["99"]),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, errs.groups())) if errs else 0)}


def scrape_cost(sup, n: int = 200) -> tuple[float, int]:
    """Supervisor CPU µs per /metrics scrape, and the page's size."""
    s = requests.Session()
    before = cpu_s(sup.proc.pid)
    for _ in range(n):
        body = s.get(sup.url("/metrics"), timeout=10).content
    return (cpu_s(sup.proc.pid) - before) / n * 1e6, len(body)


def run_engine(kind: str, factory: SupervisorFactory, router_bin: Path, front: str, args, lua: Path,
               lua_stream: Path, tmp: Path) -> dict:
    if kind == "stand-in":
        start = dict(engine_binary=front, env={"DMR_FRONT_FAKE_ENGINE": "1"})
        model = factory.tiny_model()
    else:
        start = {}
        model = factory.tiny_model(runtime_flags=["--temp", "0", "--threads", "1"])
    env = dict(start.pop("env", {}), RUST_LOG="warn")  # no per-request debug lines in the measured path
    sups = [factory.start(models=[model], name=f"{kind}-{i}", env=env, **start) for i in range(3)]
    for s in sups:
        assert s.chat(max_tokens=1).status_code == 200
    health = ["--health-check-interval-secs", "2", "--health-check-endpoint", "/readyz"]
    r1 = Router(router_bin, [sups[0].base], "round_robin", tmp / f"{kind}-r1.log", health).start()
    r3 = Router(router_bin, [s.base for s in sups], "round_robin", tmp / f"{kind}-r3.log", health).start()
    targets = {"direct": (sups[0].base, None, lua), "router1": (r1.base, r1, lua), "router3": (r3.base, r3, lua)}
    if kind == "stand-in":  # the same through a stream: what each SSE frame costs the router
        targets.update({"direct-stream": (sups[0].base, None, lua_stream),
                        "router1-stream": (r1.base, r1, lua_stream)})
    runs: dict[str, list[dict]] = {k: [] for k in targets}
    try:
        for url, _, script in targets.values():  # warm-up: connections, caches, the engines' first batches
            wrk(url, 1, args.connections, script)
        # What each process burns with no request at all (health checks, timers), taken out of the per-request CPU.
        procs = {"r1": r1.proc.pid, "r3": r3.proc.pid, "sup": sups[0].proc.pid}
        c0 = {k: cpu_s(p) for k, p in procs.items()}
        time.sleep(3)
        idle = {k: (cpu_s(p) - c0[k]) / 3 for k, p in procs.items()}
        for _ in range(args.rounds):
            for name, (url, router, script) in targets.items():
                c0 = cpu_s(router.proc.pid) if router else 0.0
                s0 = cpu_s(sups[0].proc.pid)
                t0 = time.monotonic()
                res = wrk(url, args.seconds, args.connections, script)
                dt = time.monotonic() - t0
                ridle = idle["r3" if router is r3 else "r1"] * dt
                res["router_cpu_us"] = (max(cpu_s(router.proc.pid) - c0 - ridle, 0) / res["requests"] * 1e6
                                        if router else None)
                # Supervisor 0 serves every request in direct and router1, a third in router3.
                share = 3 if name == "router3" else 1
                sup_cpu = max(cpu_s(sups[0].proc.pid) - s0 - idle["sup"] * dt, 0)
                res["sup_cpu_us"] = sup_cpu / (res["requests"] / share) * 1e6
                runs[name].append(res)
                print(f"{kind:8} {name:8} p50 {res['p50']:.2f} ms  p99 {res['p99']:.2f} ms  "
                      f"{res['rps']:.0f} req/s  errors {res['errors']}", file=sys.stderr)
        scrape_us, scrape_bytes = scrape_cost(sups[0])
    finally:
        r1.stop()
        r3.stop()
        for s in sups:
            s.stop()
    med = {name: {k: statistics.median([r[k] for r in rs]) if rs[0][k] is not None else None
                  for k in rs[0]} for name, rs in runs.items()}
    med["_scrape"] = {"us": scrape_us, "bytes": scrape_bytes}
    med["_idle"] = idle
    return med


def table(results: dict) -> str:
    lines = ["| engine | path | p50 ms | p99 ms | req/s | errors | router CPU µs/req | supervisor CPU µs/req |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    label = {"direct": "client → supervisor", "router1": "client → vLLM Router → 1 supervisor",
             "router3": "client → vLLM Router → 3 supervisors",
             "direct-stream": f"client → supervisor, streamed ({STREAM_FRAMES} SSE frames)",
             "router1-stream": f"client → vLLM Router → 1 supervisor, streamed ({STREAM_FRAMES} SSE frames)"}
    for kind, med in results.items():
        for name in [n for n in label if n in med]:
            m = med[name]
            rc = f"{m['router_cpu_us']:.0f}" if m["router_cpu_us"] is not None else "–"
            lines.append(f"| {kind} | {label[name]} | {m['p50']:.2f} | {m['p99']:.2f} | {m['rps']:.0f} | "
                         f"{m['errors']:.0f} | {rc} | {m['sup_cpu_us']:.0f} |")
    lines.append("")
    for kind, med in results.items():
        d, r1 = med["direct"], med["router1"]
        lines.append(f"- {kind}: the router hop adds {r1['p50'] - d['p50']:+.2f} ms at p50, "
                     f"{r1['p99'] - d['p99']:+.2f} ms at p99, {100 * (r1['rps'] / d['rps'] - 1):+.0f} % req/s; "
                     f"one /metrics scrape costs a supervisor {med['_scrape']['us']:.0f} µs CPU "
                     f"({med['_scrape']['bytes']} bytes); idle, the router burns "
                     f"{med['_idle']['r3'] * 1000:.0f} ms CPU/s with 3 workers "
                     f"({med['_idle']['r1'] * 1000:.0f} with 1), "
                     f"a supervisor {med['_idle']['sup'] * 1000:.0f} ms/s (already taken out of the CPU columns).")
        if "router1-stream" in med:
            per_frame = (med["router1-stream"]["router_cpu_us"] - r1["router_cpu_us"]) / (STREAM_FRAMES - 1)
            lines.append(f"- {kind}: each SSE frame past the first costs the router at most {per_frame:.0f} µs CPU "
                         f"(streamed minus plain, over {STREAM_FRAMES - 1} frames: an upper bound, since the streamed "
                         f"runs go at a lower rate, where every request costs more wake-ups).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--front", required=True, help="the tests/front.rs test binary (the fast stand-in engine)")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    prereqs = find_prereqs()
    router_bin = find_router()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-out-"))
    lua, lua_stream = tmp / "chat.lua", tmp / "chat-stream.lua"
    lua.write_text(LUA % "")
    lua_stream.write_text(LUA % ',"stream":true')
    factory = SupervisorFactory(prereqs, tmp)
    results = {}
    try:
        for kind in ("stand-in", "tiny model"):
            results[kind] = run_engine(kind, factory, router_bin, args.front, args, lua, lua_stream, tmp)
    finally:
        problems = factory.close(False)
        if problems:
            print("\n".join(problems), file=sys.stderr)
    print(table(results))


if __name__ == "__main__":
    main()
