"""1 000 concurrent streams through the supervisor to a streaming stand-in engine (tests/load/stand_in_engine.py; the
real llama-server has a handful of slots): all complete, one engine is spawned, and the supervisor's memory stays
bounded (its resident set is sampled throughout). Past `max_in_flight` requests wait, and past `max_queue` waiting
ones get 503 with Retry-After at once: never a hang."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

from harness import REPO, figure

STREAMS = 1000


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def one_stream(port: int, refusal_times: list[float] | None = None) -> int:
    """Chunks received before [DONE]; -1 if the stream broke; -503 for a 503 with Retry-After and an OpenAI error
    (then the seconds from the request's last byte sent to the answer's end go to `refusal_times`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    writer.write(b"POST /engines/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    sent = time.monotonic()
    data = await reader.read()  # until the server closes
    answered = time.monotonic() - sent
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 503"):
        retry = [l for l in head.split(b"\r\n") if l.lower().startswith(b"retry-after:")]
        error = json.loads(body)["error"]
        if refusal_times is not None:
            refusal_times.append(answered)
        return -503 if retry and "waiting" in error["message"] and error["type"] else -1
    if b"data: [DONE]" not in data:
        return -1
    return data.count(b'"content": "t')


async def all_streams(port: int, refusal_times: list[float] | None = None) -> list[int]:
    return await asyncio.gather(*(one_stream(port, refusal_times) for _ in range(STREAMS)))


def stand_in(tmp_path: Path) -> Path:
    engine = tmp_path / "stand-in.sh"
    engine.write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests/load/stand_in_engine.py'} \"$@\"\n")
    engine.chmod(0o755)
    return engine


def test_a_thousand_concurrent_streams_complete_with_bounded_memory(supervisors, tmp_path):
    sup = supervisors.start(engine_binary=str(stand_in(tmp_path)))
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
    figure("load.streams.seconds", f"{took:.1f}")
    figure("load.streams.rss_before_mib", before >> 20)
    figure("load.streams.rss_peak_mib", peak[0] >> 20)
    figure("load.streams.rss_after_mib", after >> 20)
    # About 100 KiB per concurrent stream at the peak, at most; most of it returned afterwards.
    assert peak[0] - before < STREAMS * 100 * 1024, (before, peak[0])
    assert after - before < 64 << 20, (before, after)


def test_past_max_in_flight_requests_wait_and_past_max_queue_they_get_503_at_once(supervisors, tmp_path):
    stats = tmp_path / "most-streams-at-once"
    # Streams of 2 s, so that the 1 000 requests arrive while the first ones still hold their slots.
    sup = supervisors.start(engine_binary=str(stand_in(tmp_path)),
                            env={"STAND_IN_STATS": str(stats), "STAND_IN_DELAY": "0.1"},
                            scheduler={"max_in_flight": 100, "max_queue": 300, "queue_timeout": "1m"})
    assert sup.chat(max_tokens=2).status_code == 200  # loads the stand-in
    started = time.monotonic()
    refusal_times: list[float] = []
    results = asyncio.run(all_streams(sup.port, refusal_times))
    took = time.monotonic() - started
    complete, refused = results.count(20), results.count(-503)
    slowest = max(refusal_times, default=0.0)
    print(f"\n{STREAMS} streams in {took:.1f}s: {complete} complete, {refused} refused with 503 (the slowest "
          f"refusal {slowest * 1000:.0f} ms after its request), the engine held at most {stats.read_text()} at once")
    figure("load.refused.seconds", f"{took:.1f}")
    figure("load.refused.complete", complete)
    figure("load.refused.refused", refused)
    figure("load.refused.slowest_refusal_ms", f"{slowest * 1000:.0f}")
    figure("load.refused.engine_most_at_once", stats.read_text().strip())
    assert complete + refused == STREAMS, f"{sum(r == -1 for r in results)} broken or malformed"
    # 100 in flight and 300 waiting are always served; the rest get 503 unless slots freed up while they arrived.
    assert complete >= 400 and refused > 0, (complete, refused)
    # "At once": a refused request never waits, not for a slot (a stream holds one for 2 s) nor for the queue
    # timeout (1 min); 1 s covers a busy 2-core machine answering 600 refusals in a burst.
    assert slowest < 1.0, sorted(refusal_times)[-10:]
    assert int(stats.read_text()) <= 100
    assert sup.ps()[0]["in_flight"] == 0
