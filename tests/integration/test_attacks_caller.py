"""Attacks by API callers (issue 19): a caller from another address, server paths, slow and heavy clients.

The caller from another address is real: the test makes a network namespace joined to this one by a veth pair
(root, as CI runs), starts the daemon listening on 0.0.0.0, and sends requests from inside the namespace, so the
daemon sees a non-loopback peer. The daemon runs with a secret in its environment (`HF_TOKEN`) and beside its
store; every test asserts the refusal AND that the secret, and the server's paths, never come back.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import wait_until

SECRET = "hf_attack_secret_7f3c9a"
CHAT = "/engines/v1/chat/completions"


# ---------------------------------------------------------------------------------------------------------------
# A caller from another address: a network namespace of the test's own


class Remote:
    """A network namespace with the address `ns_ip`, reaching this namespace at `host_ip` over a veth pair."""

    def __init__(self, tag: int):
        if os.geteuid() != 0:
            pytest.fail("the remote-caller tests make a network namespace: run them as root (CI does)")
        self.ns = f"dmr-attack-{tag}"
        self.host_if, self.ns_if = f"dmrh{tag % 100000}", f"dmrn{tag % 100000}"
        self.host_ip, self.ns_ip = "10.213.77.1", "10.213.77.2"  # only on the veth pair this test makes
        self._run("ip", "netns", "add", self.ns)
        try:
            self._run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            self._run("ip", "link", "set", self.ns_if, "netns", self.ns)
            self._run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            self._run("ip", "link", "set", self.host_if, "up")
            self._run("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            self._run("ip", "netns", "exec", self.ns, "ip", "link", "set", self.ns_if, "up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _run(*argv: str) -> None:
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"{' '.join(argv)}: {r.stderr.strip()}", pytrace=False)

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def request(self, port: int, method: str, path: str, body: dict | None = None,
                headers: dict | None = None) -> tuple[int, str]:
        """One request from inside the namespace; (status, body text)."""
        script = (
            "import json, sys, urllib.request, urllib.error\n"
            "a = json.loads(sys.argv[1])\n"
            "data = None if a['body'] is None else json.dumps(a['body']).encode()\n"
            "req = urllib.request.Request(a['url'], data=data, method=a['method'], headers=a['headers'])\n"
            "try:\n"
            "    r = urllib.request.urlopen(req, timeout=20); status, text = r.status, r.read()\n"
            "except urllib.error.HTTPError as e:\n"
            "    status, text = e.code, e.read()\n"
            "print(json.dumps([status, text.decode('utf-8', 'replace')]))\n"
        )
        args = {"url": f"http://{self.host_ip}:{port}{path}", "method": method, "body": body,
                "headers": {"Content-Type": "application/json", **(headers or {})}}
        r = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", script, json.dumps(args)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        status, text = json.loads(r.stdout)
        return status, text


@pytest.fixture(scope="module")
def remote():
    r = Remote(os.getpid())
    yield r
    r.close()


def secret_files(tmp_path: Path) -> dict[str, Path]:
    """Server files an attacker would like: a secret file, and a model directory holding a link to it."""
    secret = tmp_path / "secret.txt"
    secret.write_text(f"HF_TOKEN={SECRET}\n")
    return {"secret": secret}


def assert_nothing_leaked(text: str, *paths: Path) -> None:
    assert SECRET not in text, text
    for p in paths:
        assert str(p) not in text, f"the answer names the server path {p}: {text}"


REMOTE_CREATES = [
    {"from": "/proc/self/environ"},
    {"from": "/nonexistent/x.gguf"},
    {"from": "TINY", "license": "/proc/self/environ"},
    {"from": "TINY", "chat_template": "/proc/self/environ"},
    {"from": "ai/anything", "license": "/etc/passwd"},
]


@pytest.mark.parametrize("keys", [False, True], ids=["no api keys", "caller holds an api key"])
def test_a_remote_caller_cannot_import_any_server_file(supervisors, prereqs, remote, tmp_path, keys):
    server = {"listen": "0.0.0.0:0"}
    headers = {}
    if keys:
        server["api_keys"] = ["sk-attack-test"]
        headers = {"Authorization": "Bearer sk-attack-test"}
    sup = supervisors.start(server=server, env={"HF_TOKEN": SECRET})
    before = sorted(p.name for p in (sup.store / "blobs" / "sha256").glob("*"))
    answers = []
    for create in REMOTE_CREATES:
        body = {k: (str(prereqs.tiny_gguf) if v == "TINY" else v) for k, v in create.items()}
        status, text = remote.request(sup.port, "POST", "/models/create", body, headers)
        answers.append((status, text))
        assert status == 403, (body, status, text)
        assert "loopback or the Unix socket" in text, text
        assert_nothing_leaked(text, prereqs.tiny_gguf)
    # One answer for all: whether a path exists is not told.
    assert len({t for _, t in answers}) == 1, answers
    # Nothing entered the store, and no model holds the secret for an export to hand out.
    assert sorted(p.name for p in (sup.store / "blobs" / "sha256").glob("*")) == before
    status, text = remote.request(sup.port, "GET", "/models", None, headers)
    assert status == 200, text
    assert [m["tags"] for m in json.loads(text)] == [["ai/tiny:latest"]], text
    # The same caller is otherwise served: the refusal is about server paths, not about the caller.
    status, text = remote.request(sup.port, "GET", "/models/ai/tiny", None, headers)
    assert status == 200, text


def test_without_import_roots_a_local_caller_cannot_import_server_paths_either(supervisors, prereqs, tmp_path):
    sup = supervisors.start(store_table={"import_roots": []}, env={"HF_TOKEN": SECRET})
    for body in ({"from": str(prereqs.tiny_gguf), "name": "ai/copy"},
                 {"from": str(prereqs.tiny_gguf), "name": "ai/copy", "license": "/proc/self/environ"}):
        r = sup.post("/models/create", body)
        assert r.status_code == 403, r.text
        assert "import_roots" in r.text and "dmr-supervisor package" in r.text, r.text
        assert_nothing_leaked(r.text)
    assert sup.get("/models/ai/copy").status_code == 404


def test_a_local_caller_imports_only_below_the_roots_and_never_through_a_link_out(supervisors, prereqs, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    files = secret_files(tmp_path)  # outside the root
    gguf = root / "tiny.gguf"
    gguf.write_bytes(prereqs.tiny_gguf.read_bytes())
    (root / "license-link").symlink_to(files["secret"])
    (root / "environ-link").symlink_to("/proc/self/environ")
    (root / "model-link.gguf").symlink_to(files["secret"])
    st = root / "st-model"
    st.mkdir()
    (st / "config.json").write_text('{"architectures":["LlamaForCausalLM"],"max_position_embeddings":64}')
    (st / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    (st / "tokenizer.json").symlink_to(files["secret"])
    sup = supervisors.start(store_table={"import_roots": [str(root)]}, env={"HF_TOKEN": SECRET})
    blobs = sup.store / "blobs" / "sha256"
    before = sorted(p.name for p in blobs.glob("*"))

    cases = [
        ({"from": str(gguf), "license": str(files["secret"])}, 403),
        ({"from": str(gguf), "license": str(root / "license-link")}, 403),
        ({"from": str(gguf), "chat_template": str(root / "environ-link")}, 403),
        ({"from": str(root / "model-link.gguf")}, 403),
        ({"from": "/proc/self/environ"}, 403),
        ({"from": str(sup.store / "models.json")}, 403),
        ({"from": f"{root}/../secret.txt"}, 400),
        ({"from": str(root / "absent.gguf")}, 404),  # below a root, a local caller may learn it is missing
    ]
    for body, status in cases:
        r = sup.post("/models/create", {**body, "name": "ai/stolen"})
        assert r.status_code == status, (body, r.status_code, r.text)
        assert_nothing_leaked(r.text)
    # A model directory whose file links out is refused by name, without the linked file's content or path.
    r = sup.post("/models/create", {"from": str(st), "name": "ai/stolen"})
    text = r.text
    assert "tokenizer.json is a symlink to a file outside the model's files" in text, text
    assert_nothing_leaked(text, files["secret"])
    # A file that is not GGUF: its bytes are not echoed.
    (root / "not-a-model.gguf").write_text(f"HF_TOKEN={SECRET}\n")
    r = sup.post("/models/create", {"from": str(root / "not-a-model.gguf"), "name": "ai/stolen"})
    assert r.status_code == 400 and "not a GGUF file" in r.text, r.text
    assert_nothing_leaked(r.text)
    assert "magic is" not in r.text and "[48" not in r.text, r.text  # 'HF' as bytes, as the old error showed them
    assert sup.get("/models/ai/stolen").status_code == 404
    assert sorted(p.name for p in blobs.glob("*")) == before
    # What lies below the root is imported as before.
    r = sup.post("/models/create", {"from": str(gguf), "name": "ai/allowed"})
    assert r.status_code == 200 and '"success"' in r.text, r.text
    assert sup.get("/models/ai/allowed").status_code == 200


# ---------------------------------------------------------------------------------------------------------------
# Slow and heavy clients


def test_a_slow_header_is_cut_off_and_connections_are_capped(supervisors):
    sup = supervisors.start(server={"header_read_timeout": "2s", "max_connections": 3})
    slow = []
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", sup.port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished: one header line, then silence
        slow.append(s)
    started = time.monotonic()
    # Every slot is held, so a fourth client waits in the backlog until the slow ones are cut off.
    r = sup.session.get(sup.url("/health"), timeout=20, headers={"Connection": "close"})
    waited = time.monotonic() - started
    assert r.status_code == 200
    assert 1.5 <= waited <= 10, f"the fourth client was served after {waited:.1f}s (timeout 2s, cap 3)"
    for s in slow:
        s.settimeout(10)
        try:
            rest = s.recv(4096)
        except ConnectionResetError:
            rest = b""
        # Closed by the daemon (perhaps after a 408), never answered 200.
        assert b"200 OK" not in rest, rest
        assert s.recv(4096) == b"" if rest else True
        s.close()


def test_a_slowloris_trickle_is_closed_within_the_header_timeout(supervisors):
    sup = supervisors.start(server={"header_read_timeout": "2s"})
    s = socket.create_connection(("127.0.0.1", sup.port))
    s.settimeout(0.5)
    started, closed_after = time.monotonic(), None
    request = b"POST /engines/v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200
    for byte in request:
        try:
            s.sendall(bytes([byte]))
            if s.recv(4096) == b"":
                closed_after = time.monotonic() - started
                break
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            closed_after = time.monotonic() - started
            break
    s.close()
    assert closed_after is not None, "the daemon kept a one-byte-per-half-second client for its whole header"
    assert 1.5 <= closed_after <= 6, closed_after
    assert sup.get("/health").status_code == 200


def json_bomb(keys: int) -> bytes:
    members = ",".join(f'"k{i}":{i}' for i in range(keys))
    return ('{"model":"ai/tiny","max_tokens":4,"messages":[{"role":"user","content":"hi"}],"x":{' + members
            + "}}").encode()


@pytest.mark.parametrize("path,dialect", [
    (CHAT, "openai"), ("/v1/messages", "anthropic"), ("/api/chat", "ollama"), ("/api/generate", "ollama"),
])
def test_json_bombs_and_bad_bytes_are_refused_before_any_engine(sup, path, dialect):
    bodies = {
        "100 000 keys": json_bomb(100_000),
        "invalid UTF-8 in a string": b'{"model":"ai/tiny","max_tokens":4,"messages":"\xff\xfe"}',
    }
    for what, body in bodies.items():
        started = time.monotonic()
        r = sup.session.post(sup.url(path), data=body, headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 400, (what, r.status_code, r.text[:300])
        assert time.monotonic() - started < 5, what
        j = r.json()
        if dialect == "openai":
            message = j["error"]["message"]
        elif dialect == "anthropic":
            assert j["type"] == "error", j
            message = j["error"]["message"]
        else:
            message = j["error"]
        expected = "more than 50000 JSON values" if what == "100 000 keys" else "not valid UTF-8"
        assert expected in message, (what, message)
    assert sup.spawns() == [], "a refused body started an engine"
    # A request of ordinary shape is still served.
    r = sup.chat(max_tokens=2)
    assert r.status_code == 200, r.text


class Listener:
    """A local TCP port that counts the connections it gets: a service on the daemon's loopback that a network
    caller would like to reach through the daemon."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def test_a_remote_caller_cannot_aim_pulls_or_pushes_at_the_daemons_loopback(supervisors, remote):
    """SSRF: `host:port/...` on loopback is spoken to over plain HTTP, so a pull or a push names any local port.
    From the network that is refused (403, nothing connects); from loopback it goes ahead; an operator who lists
    the registry in `[registry] insecure` allows it for everyone."""
    target = Listener()
    try:
        sup = supervisors.start(server={"listen": "0.0.0.0:0"})
        ref = f"127.0.0.1:{target.port}/ai/probe:latest"
        assert sup.post(f"/models/ai/tiny/tag?repo=127.0.0.1:{target.port}/ai/probe&tag=latest").status_code == 201
        for method, path, body in (
            ("POST", "/models/create", {"from": ref}),
            ("POST", "/models/create", {"from": f"localhost:{target.port}/ai/probe"}),
            ("POST", "/api/pull", {"model": ref}),
            ("POST", f"/models/{ref}/push", None),
        ):
            status, text = remote.request(sup.port, method, path, body)
            assert status == 403, (path, body, status, text)
            assert "loopback" in text, text
        time.sleep(0.5)
        assert target.connections == 0, "the daemon connected to its loopback for a network caller"
        # The same pull from a local caller does reach the port (the refusal is about the caller).
        assert sup.post("/models/create", {"from": ref}).status_code in (200, 502)
        wait_until(lambda: target.connections > 0, 10.0, "a local caller's pull to reach the port")
        seen = target.connections
        # Listed by the operator: allowed for the network too.
        allowed = supervisors.start(server={"listen": "0.0.0.0:0"},
                                    extra=f'[registry]\ninsecure = ["127.0.0.1:{target.port}"]\n')
        status, text = remote.request(allowed.port, "POST", "/models/create", {"from": ref})
        assert status != 403, text
        wait_until(lambda: target.connections > seen, 10.0, "the listed registry to be reached")
    finally:
        target.close()
