"""Several supervisors behind the real vLLM Router (issue 16): what test_cluster.py and scripts/bench-scale-out share.

- `find_router()`: the `vllm-router` launcher from PyPI (scripts/fleet-env.sh installs it; DMR_VLLM_ROUTER), or a
  failure that names the command.
- `Router`: one running vllm-router on OS-chosen ports (its API and its Prometheus exporter), started with static
  `--worker-urls`, a policy and health-check settings; helpers for its `/get_loads`, its Prometheus series and its
  log. The router is the real one: nothing here stands in for it.
- `Load`: a steady closed-loop load (N threads, one request after another) that records every request's start, end,
  status and error, for the failure and drain tests.
- `node_chats(sup)`: how many chat completions a supervisor has answered, from its own `/metrics`
  (`dmr_requests_total`), so a test sees where the router sent requests without trusting the router's word.

What vLLM Router 0.1.17 asks of a worker (seen on the wire, and in vllm-project/router `src/routers/http/router.rs`):
`GET /health` (startup wait, then every `--health-check-interval-secs`; `--health-check-endpoint` changes the
path), `GET /get_load` answering `{"load": N}` (only with `--policy power_of_two`, every
`--worker-startup-check-interval` seconds; `/get_loads` on the router shows what it read, -1 when a worker did not
answer), and `GET /v1/models` proxied to one worker. It never reads a worker's `/metrics`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from harness import REPO, Supervisor, wait_until

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def find_router() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    default = cache / "dmr-supervisor/fleet-env/bin/vllm-router"
    path = Path(os.environ.get("DMR_VLLM_ROUTER") or default)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"vllm-router not found at {path} (DMR_VLLM_ROUTER): run `{REPO}/scripts/fleet-env.sh` and set "
                    "DMR_VLLM_ROUTER to <the directory it prints>/vllm-router", pytrace=False)
    return path


def free_port() -> int:
    """A port free now (the router takes no port 0). The kernel does not hand it out again at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prom_samples(text: str, name: str) -> dict[str, float]:
    """`{label-string: value}` for every sample of series `name` in a Prometheus text page."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            labels = head[len(name):]
            out[labels] = float(value)
    return out


def node_chats(sup: Supervisor) -> int:
    """Chat completions this supervisor has answered (any status), from its own `dmr_requests_total`."""
    samples = prom_samples(sup.get("/metrics", timeout=10).text, "dmr_requests_total")
    return int(sum(v for k, v in samples.items() if 'route="/v1/chat/completions"' in k))


@dataclass
class Router:
    binary: Path
    workers: list[str]
    policy: str
    log_path: Path
    extra: list[str] = field(default_factory=list)
    port: int = 0
    prom_port: int = 0
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "Router":
        self.port, self.prom_port = free_port(), free_port()
        argv = [str(self.binary), "--host", "127.0.0.1", "--port", str(self.port),
                "--worker-urls", *self.workers, "--policy", self.policy,
                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(self.prom_port), *self.extra]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, NO_COLOR="1", RUST_LOG_STYLE="never"))
        # The router binds only once one worker answered /health; ready once it sees all of them healthy.
        wait_until(lambda: self._alive_or_fail() and self.healthy_workers() == set(self.workers)
                   and requests.get(self.base + "/liveness", timeout=2).ok, timeout,
                   f"vllm-router on :{self.port} to see {len(self.workers)} healthy workers")
        return self

    def _alive_or_fail(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"vllm-router exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}", pytrace=False)
        return True

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chat(self, content: str, *, session: requests.Session | None = None, headers: dict | None = None,
             max_tokens: int = 8, messages: list | None = None, timeout: float = 30.0) -> requests.Response:
        body = {"model": "ai/tiny", "messages": messages or [{"role": "user", "content": content}],
                "max_tokens": max_tokens}
        return (session or requests).post(self.base + "/v1/chat/completions", json=body, headers=headers or {},
                                          timeout=timeout)

    def prometheus(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.prom_port}/metrics", timeout=5).text

    def worker_health(self) -> dict[str, float]:
        """`vllm_router_worker_health` per worker URL (1 healthy, 0 not)."""
        samples = prom_samples(self.prometheus(), "vllm_router_worker_health")
        return {re.search(r'worker="([^"]+)"', k).group(1): v for k, v in samples.items()}

    def healthy_workers(self) -> set[str]:
        try:
            return {w for w, v in self.worker_health().items() if v == 1}
        except requests.RequestException:
            return set()

    def loads(self) -> dict[str, int]:
        """The router's `/get_loads`: what it reads from each worker's `/get_load` (-1: no answer)."""
        body = requests.get(self.base + "/get_loads", timeout=10).json()
        return {w["worker"]: w["load"] for w in body["workers"]}

    def log_text(self) -> str:
        try:
            return ANSI.sub("", self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass
class Outcome:
    start: float
    end: float
    status: int | None  # None: no HTTP answer at all
    error: str = ""
    content: str = ""


class Load:
    """A closed-loop load through `router`: `threads` clients, each sending one chat after the other until stopped."""

    def __init__(self, router: Router, threads: int = 3, max_tokens: int = 16, headers: dict | None = None,
                 prompt: str | None = None):
        self.router, self.threads, self.max_tokens, self.headers = router, threads, max_tokens, headers or {}
        self.prompt = prompt  # one prompt for every request (answers comparable), else one per request
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _run(self, i: int) -> None:
        session = requests.Session()
        n = 0
        while not self._stop.is_set():
            n += 1
            t0 = time.monotonic()
            try:
                r = self.router.chat(self.prompt or f"load {i}-{n}", session=session, headers=self.headers,
                                     max_tokens=self.max_tokens)
                o = Outcome(t0, time.monotonic(), r.status_code, "" if r.ok else r.text[:300],
                            r.json()["choices"][0]["message"]["content"] if r.ok else "")
            except (requests.RequestException, ValueError, KeyError) as e:
                o = Outcome(t0, time.monotonic(), None, repr(e)[:300])
                session = requests.Session()
            with self._lock:
                self.outcomes.append(o)

    def __enter__(self) -> "Load":
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"load-{i}")
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=60)

    def done(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.status != 200]
