"""Pulls from a hostile Hugging Face endpoint (issue 19): the stand-in hub (tests/hf/hf_server.py) lies in its tree
listing or streams something else than the file. Every file is held to the size and hash its tree entry lists: a
file larger than listed (with or without a Content-Length), one shorter than listed (a hub that then ignores Range
looks like a cut: its partial is kept to resume), a listed size of 0 followed by an endless stream, an LFS file
whose sha256 differs, a git file whose blob id differs — each is refused with an NDJSON `error` line naming the
file, and nothing of it is kept: no model committed, the store's blobs exactly as before, no staging or
`.incomplete` file left. Listings that cannot bound a download (an entry without a size, a listing past `[registry]
max_manifest_bytes`, more than MAX_FILES files) are refused with 502 before any file is requested. Each test first
pulls an honest model from the same hub, so the store is not empty and the hub is known to work."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from hf_repos import HfServer, git_blob_oid, lines, make_hf_root, start

GGUF_REPO = "testorg/tiny-GGUF"
Q4 = f"{GGUF_REPO}/tiny-Q4_K_M.gguf"
ST_REPO = "testorg/tiny-st"
ENDLESS_CAP = 64 << 20  # the "endless" stream ends here, so that a client without a bound stores 64 MiB, not all


@pytest.fixture
def hf_root(tmp_path, supervisors) -> Path:
    return make_hf_root(tmp_path / "hf", supervisors)


def blobs(store: Path) -> dict[str, int]:
    d = store / "blobs"
    return {str(p.relative_to(d)): p.stat().st_size for p in d.rglob("*") if p.is_file()} if d.exists() else {}


def honest(sup) -> tuple[dict[str, int], list]:
    """Pulls the Q8_0 file honestly; returns the store's blobs and model list afterwards."""
    out = lines(sup.post("/models/create", {"from": f"hf.co/{GGUF_REPO}:Q8_0"}, timeout=120))
    assert out[-1]["type"] == "success", out[-3:]
    before = blobs(sup.store)
    assert before, "the honest pull stored blobs"
    return before, sup.get("/models").json()


def refused(sup, ref: str, *needles: str) -> str:
    r = sup.post("/models/create", {"from": ref}, timeout=120)
    assert r.status_code == 200, r.text  # the listing was fine: the refusal comes while streaming
    out = lines(r)
    last = out[-1]
    assert last["type"] == "error", out[-3:]
    for n in needles:
        assert n in last["message"], last["message"]
    return last["message"]


def assert_nothing_kept(sup, before: tuple[dict[str, int], list]) -> None:
    blobs_before, models_before = before
    assert blobs(sup.store) == blobs_before, "no blob added (no orphan), none removed"
    assert sup.get("/models").json() == models_before, "nothing committed"
    staging = sup.store / "hf-staging"
    assert not staging.exists() or not any(staging.rglob("*")), list(staging.rglob("*"))
    left = [p for p in sup.store.rglob("*") if p.name.endswith(".incomplete") or ".tmp" in p.name]
    assert not left, left
    assert sup.alive()


def wchar(sup) -> int:
    """Bytes the daemon has written through write(2) and friends, to any file or socket."""
    for line in Path(f"/proc/{sup.proc.pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/PID/io")


@pytest.mark.parametrize("served", ["with_length", "streamed"])
def test_a_file_larger_than_listed_is_refused(supervisors, hf_root, served):
    data = (hf_root / Q4).read_bytes()
    listed = len(data) - 1000
    with HfServer(hf_root) as hf:
        sha = hashlib.sha256(data).hexdigest()
        hf.lie(Q4, size=listed, lfs={"oid": sha, "size": listed, "pointerSize": 134})
        if served == "streamed":  # no Content-Length: only counting the bytes can stop it
            hf.stream(Q4, lambda: (data[i:i + 65536] for i in range(0, len(data), 65536)))
        sup = start(supervisors, hf.url)
        before = honest(sup)
        refused(sup, f"hf.co/{GGUF_REPO}", "tiny-Q4_K_M.gguf", f"is larger than the {listed} bytes listed",
                "nothing of it is kept")
        assert_nothing_kept(sup, before)


def test_a_file_shorter_than_listed_is_refused(supervisors, hf_root):
    data = (hf_root / Q4).read_bytes()
    listed = len(data) + 1000
    with HfServer(hf_root) as hf:
        sha = hashlib.sha256(data).hexdigest()
        hf.lie(Q4, size=listed, lfs={"oid": sha, "size": listed, "pointerSize": 134})
        sup = start(supervisors, hf.url)
        before = honest(sup)
        # The whole file arrives, the resume asks for the rest and is told there is none (416).
        refused(sup, f"hf.co/{GGUF_REPO}", "tiny-Q4_K_M.gguf", f"ends before the {listed} bytes listed",
                "nothing of it is kept")
        assert_nothing_kept(sup, before)
        # A hub that ignores Range and ends early each time looks like a cut connection: after the resumes, the
        # pull fails and what arrived is kept for the next one (at most the listed size), nothing committed.
        hf.stream(Q4, lambda: iter([data]))
        refused(sup, f"hf.co/{GGUF_REPO}", "tiny-Q4_K_M.gguf", f"kept breaking off before the {listed} bytes listed")
        kept = list(sup.store.rglob("*.incomplete"))
        assert [p.name for p in kept] == ["tiny-Q4_K_M.gguf.incomplete"], kept
        assert kept[0].stat().st_size <= listed
        assert blobs(sup.store) == before[0] and sup.get("/models").json() == before[1]


def test_a_file_listed_as_empty_that_streams_without_end_is_cut_off_at_once(supervisors, hf_root):
    def endless():
        chunk = b"\0" * (1 << 20)
        for _ in range(ENDLESS_CAP // len(chunk)):
            yield chunk

    with HfServer(hf_root) as hf:
        hf.lie(Q4, size=0, lfs=None, oid=git_blob_oid(b""))
        hf.stream(Q4, endless)
        sup = start(supervisors, hf.url)
        before = honest(sup)
        written, t0 = wchar(sup), time.monotonic()
        refused(sup, f"hf.co/{GGUF_REPO}", "tiny-Q4_K_M.gguf", "is larger than the 0 bytes listed")
        took, wrote = time.monotonic() - t0, wchar(sup) - written
        assert took < 10, f"refused only after {took:.1f}s"
        assert wrote < 1 << 20, f"the daemon wrote {wrote} bytes: more than a chunk"
        assert 0 < hf.sent.get(Q4, 0) < ENDLESS_CAP // 2, hf.sent  # it stopped reading, the hub noticed
        assert_nothing_kept(sup, before)


def test_an_lfs_file_whose_sha256_differs_from_its_listing_is_refused(supervisors, hf_root):
    data = (hf_root / Q4).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    other = hashlib.sha256(b"not these weights").hexdigest()
    with HfServer(hf_root) as hf:
        hf.lie(Q4, lfs={"oid": other, "size": len(data), "pointerSize": 134})
        sup = start(supervisors, hf.url)
        before = honest(sup)
        refused(sup, f"hf.co/{GGUF_REPO}", "tiny-Q4_K_M.gguf", f"has sha256 {actual}, {other} listed")
        assert_nothing_kept(sup, before)
        # The lie gone, the same pull succeeds (so it was the hash that was refused).
        hf.lies.clear()
        assert lines(sup.post("/models/create", {"from": f"hf.co/{GGUF_REPO}"}, timeout=120))[-1]["type"] == "success"


def test_a_git_file_whose_blob_id_differs_from_its_listing_is_refused(supervisors, hf_root):
    name = "tokenizer_config.json"  # the last file fetched: the others are staged when it is refused
    content = (hf_root / ST_REPO / name).read_bytes()
    actual, other = git_blob_oid(content), git_blob_oid(content + b" ")
    with HfServer(hf_root) as hf:
        hf.lie(f"{ST_REPO}/{name}", oid=other)
        sup = start(supervisors, hf.url)
        before = honest(sup)
        refused(sup, f"hf.co/{ST_REPO}", name, f"has git object id {actual}, {other} listed")
        assert f"/{ST_REPO}/resolve/main/config.json" in hf.paths("GET"), "other files were staged first"
        assert_nothing_kept(sup, before)


def test_listings_that_cannot_bound_a_download_are_refused_before_any_file(supervisors, hf_root):
    many = hf_root / "testorg/many"
    many.mkdir(parents=True)
    for i in range(1001):  # one more than MAX_FILES
        (many / f"shard-{i:04}.json").write_text("{}")
    with HfServer(hf_root) as hf:
        sha = hashlib.sha256((hf_root / Q4).read_bytes()).hexdigest()
        hf.lie(Q4, size=None, lfs={"oid": sha, "pointerSize": 134})  # no size anywhere
        sup = start(supervisors, hf.url)
        before = blobs(sup.store), sup.get("/models").json()
        r = sup.post("/models/create", {"from": f"hf.co/{GGUF_REPO}"})
        assert r.status_code == 502, r.text
        assert "tiny-Q4_K_M.gguf is listed without a size" in r.text, r.text
        r = sup.post("/models/create", {"from": "hf.co/testorg/many"})
        assert r.status_code == 502, r.text
        assert "has 1001 files to download, more than the 1000 a pull takes" in r.text, r.text
        small = start(supervisors, hf.url, extra="max_manifest_bytes = 4096\n", name="small")
        r = small.post("/models/create", {"from": "hf.co/testorg/many"})
        assert r.status_code == 502, r.text
        assert "the listing is larger than 4096 bytes" in r.text, r.text
        assert not [p for p in hf.paths() if "/resolve/" in p], hf.paths()
        assert_nothing_kept(sup, before)
        assert_nothing_kept(small, (blobs(small.store), []))
