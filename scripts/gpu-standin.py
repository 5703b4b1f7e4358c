#!/usr/bin/env python3
"""An engine stand-in that really holds memory, for scripts/gpu-check: it takes llama-server's command line (the
supervisor runs it as `[engines.llamacpp] binary`), allocates its share of memory, then serves llama-server's
OpenAI routes (`/health`, `/v1/models`, `/v1/chat/completions` plain and streamed, `/v1/completions`, `/metrics`).

How much it holds, per model alias (`--alias`, which the supervisor sets to the model's name):
  GPU_STANDIN_GIB        default GiB to hold (0.25)
  GPU_STANDIN_GIB_MAP    "ai/a=40,ai/b=2.5": GiB per alias, overriding the default
  GPU_STANDIN_DEVICE     "cuda" (torch, device memory; the default when torch sees a GPU) or "cpu" (a bytearray
                         of host memory, touched page by page, so it counts in the process's RSS)
  GPU_STANDIN_LOG        a file where one JSON line per start is appended: pid, alias, device, bytes, outcome

When the allocation fails (CUDA out of memory, or `GPU_STANDIN_FAIL_ONCE=FILE` names a file that does not exist yet,
which it then creates), it prints llama.cpp's own allocation error lines to stderr and exits 1, as llama-server
does, so the supervisor's out-of-memory recognition and retry see what they would see from the real engine.
Standard library only, plus torch in cuda mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GIB = 1 << 30
PAGE = 4096


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu-standin", description="llama-server stand-in that holds memory")
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--alias", "-a", default="")
    p.add_argument("--ctx-size", "-c", type=int, default=4096)
    p.add_argument("--version", action="store_true")
    args, _rest = p.parse_known_args(argv)  # llama-server flags we do not model (--metrics, -ngl, --temp, ...)
    return args


def share_gib(alias: str, env: dict[str, str]) -> float:
    """The GiB this alias holds: its GPU_STANDIN_GIB_MAP entry (with or without `:latest`), else GPU_STANDIN_GIB."""
    table = {}
    for item in filter(None, (x.strip() for x in env.get("GPU_STANDIN_GIB_MAP", "").split(","))):
        name, _, gib = item.rpartition("=")
        table[name] = float(gib)
    for key in (alias, alias.removesuffix(":latest")):
        if key in table:
            return table[key]
    return float(env.get("GPU_STANDIN_GIB", "0.25"))


def oom_lines(nbytes: int, device: int = 0) -> str:
    mib = nbytes / (1 << 20)
    return (f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating {mib:.2f} MiB on device {device}: "
            f"cudaMalloc failed: out of memory\n"
            f"alloc_tensor_range: failed to allocate CUDA{device} buffer of size {nbytes}\n"
            f"llama_model_load: error loading model: unable to allocate CUDA{device} buffer\n")


def hold(nbytes: int, device: str):
    """Allocate and keep `nbytes`; raises MemoryError when the device cannot give them."""
    if device == "cpu":
        buf = bytearray(nbytes)
        for i in range(0, nbytes, PAGE):  # touch every page: resident, not just reserved
            buf[i] = 1
        return buf
    import torch  # only on the GPU machine

    try:
        t = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        t.fill_(1)
        torch.cuda.synchronize()
        return t
    except torch.OutOfMemoryError as e:
        raise MemoryError(str(e)) from e


def default_device() -> str:
    want = os.environ.get("GPU_STANDIN_DEVICE")
    if want:
        return want
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def log(event: dict) -> None:
    path = os.environ.get("GPU_STANDIN_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")


def make_handler(alias: str, ctx: int):
    created = int(time.time())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):  # quiet: the supervisor captures stderr
            pass

        def send_json(self, status: int, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self.send_json(200, {"status": "ok"})
            elif self.path in ("/v1/models", "/models"):
                self.send_json(200, {"object": "list", "data": [
                    {"id": alias, "object": "model", "created": created, "owned_by": "gpu-standin",
                     "meta": {"n_ctx_train": ctx}}]})
            elif self.path == "/metrics":
                body = b"# stand-in: no metrics\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            try:
                req = json.loads(self.rfile.read(n) or b"{}")
            except ValueError:
                return self.send_json(400, {"error": {"code": 400, "message": "bad JSON", "type": "invalid_request_error"}})
            words = ["Hello", " from", " the", " stand-in", "."][: max(1, int(req.get("max_tokens") or 5))]
            usage = {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}
            chat = self.path.endswith("/chat/completions")
            if not (chat or self.path.endswith("/completions")):
                return self.send_json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})
            if req.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i, w in enumerate(words + [None]):
                    choice = ({"index": 0, "delta": {"content": w} if w else {}, "finish_reason": None if w else "stop"}
                              if chat else {"index": 0, "text": w or "", "finish_reason": None if w else "stop"})
                    chunk = {"id": "standin", "object": "chat.completion.chunk" if chat else "text_completion",
                             "created": created, "model": alias, "choices": [choice]}
                    if w is None:
                        chunk["usage"] = usage
                    self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")
                return
            text = "".join(words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                      if chat else {"index": 0, "text": text, "finish_reason": "stop"})
            self.send_json(200, {"id": "standin", "object": "chat.completion" if chat else "text_completion",
                                 "created": created, "model": alias, "choices": [choice], "usage": usage})

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.version:
        print("version: 0 (gpu-standin)")
        return 0
    if not Path(args.model).exists():
        print(f"error: failed to open GGUF file '{args.model}'", file=sys.stderr)
        return 1
    alias = args.alias or Path(args.model).name
    device = default_device()
    nbytes = int(share_gib(alias, dict(os.environ)) * GIB)
    event = {"pid": os.getpid(), "alias": alias, "device": device, "bytes": nbytes}
    fail_once = os.environ.get("GPU_STANDIN_FAIL_ONCE")
    try:
        if fail_once and not os.path.exists(fail_once):
            Path(fail_once).write_text("failed once\n")
            raise MemoryError("GPU_STANDIN_FAIL_ONCE")
        held = hold(nbytes, device)  # noqa: F841 (kept alive for the process's life)
    except MemoryError as e:
        log({**event, "outcome": f"out of memory: {e}"})
        sys.stderr.write(oom_lines(nbytes))
        sys.stderr.flush()
        return 1
    log({**event, "outcome": "holding"})
    print(f"gpu-standin: holding {nbytes} bytes on {device} for {alias}", file=sys.stderr, flush=True)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(alias, args.ctx_size))
    print(f"main: server is listening on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
