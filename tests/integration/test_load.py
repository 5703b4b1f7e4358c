"""1 000 concurrent streams through the supervisor to a streaming stand-in engine (tests/load/stand_in_engine.py; the
real llama-server has a handful of slots): all complete, one engine is spawned, and the supervisor's memory stays
bounded (its resident set is sampled throughout)."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

from harness import REPO

STREAMS = 1000


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def one_stream(port: int) -> int:
    """Chunks received before [DONE]; -1 if the stream broke."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    writer.write(b"POST /engines/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    data = await reader.read()  # until the server closes
    writer.close()
    if b"data: [DONE]" not in data:
        return -1
    return data.count(b'"content": "t')


async def all_streams(port: int) -> list[int]:
    return await asyncio.gather(*(one_stream(port) for _ in range(STREAMS)))


def test_a_thousand_concurrent_streams_complete_with_bounded_memory(supervisors, tmp_path):
    engine = tmp_path / "stand-in.sh"
    engine.write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests/load/stand_in_engine.py'} \"$@\"\n")
    engine.chmod(0o755)
    sup = supervisors.start(engine_binary=str(engine))
    pid = sup.proc.pid
    assert sup.chat(max_tokens=2).status_code == 200  # loads the stand-in
    before = rss(pid)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    try:
        chunks = asyncio.run(all_streams(sup.port))
    finally:
        done.set()
        sampler.join()
    took = time.monotonic() - started
    assert chunks.count(20) == STREAMS, f"{sum(c == -1 for c in chunks)} broken, {set(chunks)}"
    assert len(sup.ps()) == 1
    after = rss(pid)
    print(f"\n{STREAMS} streams in {took:.1f}s; supervisor RSS {before >> 20} MiB before, "
          f"{peak[0] >> 20} MiB peak, {after >> 20} MiB after")
    # About 100 KiB per concurrent stream at the peak, at most; most of it returned afterwards.
    assert peak[0] - before < STREAMS * 100 * 1024, (before, peak[0])
    assert after - before < 64 << 20, (before, after)
