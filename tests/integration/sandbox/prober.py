#!/usr/bin/python3
"""A test engine that tries what a sandboxed engine must not do, then serves like llama-server so the supervisor
sees it ready. Started with llama-server's argv (`--model PATH --port N ...`). Before serving, it tries each
action below and records "ok" or the errno's name; it prints the record as one `PROBE {json}` line and answers
every chat completion with the record as the message's content. Standard library only (run by the system Python,
which a sandboxed engine may read).

Environment (inherited from the supervisor): PROBE_SECRET, a file outside every allowance; PROBE_OTHER_BLOB, the
hex digest of another model's weights in the same store; PROBE_SHARED, a directory writable only when
`[engines] sandbox_write` names it."""

from __future__ import annotations

import errno
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

argv = sys.argv[1:]
PORT = int(argv[argv.index("--port") + 1])
MODEL = Path(argv[argv.index("--model") + 1])
STORE = MODEL.parents[2]  # <store>/blobs/sha256/<hex>
HERE = Path(__file__).resolve().parent


def attempt(action) -> str:
    try:
        action()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def read(path) -> None:
    with open(path, "rb") as fh:
        fh.read(16)


def write(path) -> None:
    with open(path, "wb") as fh:
        fh.write(b"x")


def status(field: str) -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return ""


private = os.environ.get("TMPDIR", "")
record = {
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "no_new_privs": status("NoNewPrivs"), "cap_eff": status("CapEff"), "cap_bnd": status("CapBnd"),
    "tmpdir": private, "home": os.environ.get("HOME", ""), "cwd": os.getcwd(),
    "inherited_secrets": sorted(k for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "NOTIFY_SOCKET") if k in os.environ),
    # allowed
    "read_own_model": attempt(lambda: read(MODEL)),
    "read_own_tree": attempt(lambda: read(HERE.parent / "share" / "data.txt")),
    "read_system_library": attempt(lambda: read("/etc/ld.so.cache")),
    "write_private_dir": attempt(lambda: write(Path(private) / "scratch")),
    "write_dev_null": attempt(lambda: write("/dev/null")),
    # forbidden
    "read_secret": attempt(lambda: read(os.environ["PROBE_SECRET"])),
    "read_store_index": attempt(lambda: read(STORE / "models.json")),
    "read_other_model": attempt(lambda: read(STORE / "blobs" / "sha256" / os.environ["PROBE_OTHER_BLOB"])),
    "list_store_blobs": attempt(lambda: os.listdir(STORE / "blobs" / "sha256")),
    "write_store": attempt(lambda: write(STORE / "planted")),
    "overwrite_own_model": attempt(lambda: open(MODEL, "r+b").close()),
    "write_tmp": attempt(lambda: write(f"/tmp/dmr-sandbox-escape-{os.getpid()}")),
    "write_own_tree": attempt(lambda: write(HERE / "planted")),
    "write_shared": attempt(lambda: write(Path(os.environ["PROBE_SHARED"]) / "from-the-engine")),
    "read_shadow": attempt(lambda: read("/etc/shadow")),
    "setuid_root": attempt(lambda: os.setuid(0)),
    "read_supervisor_environ": attempt(lambda: read(f"/proc/{os.getppid()}/environ")),
    "signal_supervisor": attempt(lambda: os.kill(os.getppid(), 0)),
}
print("PROBE " + json.dumps(record, sort_keys=True), flush=True)


class Engine(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def answer(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self.answer(200, {"status": "ok"})
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.endswith("/chat/completions"):
            self.answer(200, {
                "id": "probe", "object": "chat.completion", "created": 0, "model": "probe",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": json.dumps(record)}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })
        else:
            self.answer(404, {"error": "not found"})


ThreadingHTTPServer(("127.0.0.1", PORT), Engine).serve_forever()
