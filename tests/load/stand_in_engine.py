#!/usr/bin/env python3
"""A streaming stand-in for an OpenAI-compatible engine, for load tests the real llama-server cannot hold (it has a
few slots; this holds thousands of streams): started with llama-server's argv (only `--port` and `--alias` are
read), it answers `GET /health` and `/metrics`, and streams `POST /v1/chat/completions` as SSE: CHUNKS chunks,
DELAY seconds apart, then a usage chunk and `[DONE]`. One response per connection (`Connection: close`). With
STAND_IN_STATS set, the most streams it ever held at once is written to that file after each stream."""

from __future__ import annotations

import asyncio
import json
import os
import sys

CHUNKS = int(os.environ.get("STAND_IN_CHUNKS", "20"))
DELAY = float(os.environ.get("STAND_IN_DELAY", "0.01"))
STATS = os.environ.get("STAND_IN_STATS")
streams = {"now": 0, "max": 0}


def arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


PORT = int(arg("--port", "8080"))
ALIAS = arg("--alias", "stand-in")


def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    body = {"id": "chatcmpl-stand-in", "object": "chat.completion.chunk", "created": 0, "model": ALIAS,
            "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        length = next((int(v) for k, _, v in (l.partition(":") for l in lines[1:]) if k.lower() == "content-length"), 0)
        if length:
            await reader.readexactly(length)
        if path == "/health":
            body = b'{"status":"ok"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
        elif path == "/metrics":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        elif method == "POST" and path.startswith("/v1/chat/completions"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
            writer.write(chunk({"role": "assistant", "content": ""}))
            streams["now"] += 1
            streams["max"] = max(streams["max"], streams["now"])
            try:
                for i in range(CHUNKS):
                    await asyncio.sleep(DELAY)
                    writer.write(chunk({"content": f"t{i} "}))
                    await writer.drain()
            finally:
                streams["now"] -= 1
                if STATS:
                    with open(STATS, "w") as f:
                        f.write(str(streams["max"]))
            writer.write(chunk({}, finish="length"))
            writer.write(chunk({}, usage={"prompt_tokens": 3, "completion_tokens": CHUNKS, "total_tokens": CHUNKS + 3}))
            writer.write(b"data: [DONE]\n\n")
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, backlog=4096)
    print(f"stand-in engine listening on 127.0.0.1:{PORT}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
