#!/usr/bin/env python3
"""A recording spy in front of the real llama-server, for tests that must see what the supervisor sent to the engine
(a field dropped before the engine changes no answer of the tiny model). Started with llama-server's argv, as the
engine binary: it starts `SPY_ENGINE` (the real llama-server) with the same argv on another port, listens on the
`--port` it was given, appends each request's body as one JSON line `{"method","path","body"}` to `SPY_LOG`, and
relays the request and the whole answer (buffered: the tests that use it do not stream). SIGTERM stops both."""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


argv = sys.argv[1:]
PORT = int(argv[argv.index("--port") + 1])
INNER = free_port()
inner_argv = list(argv)
inner_argv[inner_argv.index("--port") + 1] = str(INNER)


def die_with_the_spy() -> None:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: a SIGKILLed spy leaves no engine


engine = subprocess.Popen([os.environ["SPY_ENGINE"], *inner_argv], preexec_fn=die_with_the_spy)
LOG = os.environ["SPY_LOG"]


def stop(_signum, _frame) -> None:
    engine.terminate()
    engine.wait()
    os._exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)


class Spy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if body:
            try:
                recorded = json.loads(body)
            except ValueError:
                recorded = body.decode("utf-8", "replace")
            with open(LOG, "a") as f:
                f.write(json.dumps({"method": self.command, "path": self.path, "body": recorded}) + "\n")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", INNER, timeout=300)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError:
            self.send_error(503, "engine not up")
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = relay


ThreadingHTTPServer(("127.0.0.1", PORT), Spy).serve_forever()
