"""Cold-start coalescing: many first requests for one model share a single engine load."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

N = 100


def test_concurrent_cold_requests_spawn_one_engine(sup):
    assert sup.spawns() == [] and sup.ps() == []
    barrier = threading.Barrier(N)

    def one(i: int):
        barrier.wait(timeout=30)
        return sup.chat(max_tokens=4, messages=[{"role": "user", "content": f"Hello {i}"}])

    with ThreadPoolExecutor(N) as pool:
        results = list(pool.map(one, range(N)))

    statuses = [r.status_code for r in results]
    assert statuses == [200] * N, [(r.status_code, r.text[:200]) for r in results if r.status_code != 200]
    for r in results:
        assert r.json()["choices"][0]["message"]["content"], r.text
    spawns = sup.spawns()
    assert len(spawns) == 1, f"expected exactly one engine spawn, got {len(spawns)}: {spawns}"
    ps = sup.ps()
    assert [p["pid"] for p in ps] == [spawns[0].pid], ps
