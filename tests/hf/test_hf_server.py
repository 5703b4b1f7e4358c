"""Self-tests of the Hugging Face stand-in (hf_server.py): shapes, Range, errors, tokens, the CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from hf_server import HfServer, git_blob_oid, lfs_pointer

HERE = Path(__file__).resolve().parent
Q4 = b"GGUF" + os.urandom(30_000)
Q8 = b"GGUF" + os.urandom(40_000)
SHARD1 = b"GGUF" + os.urandom(5_000)
CONFIG = b'{"architectures": ["LlamaForCausalLM"]}\n'
MTIME = 1_700_000_000.5  # 2023-11-14T22:13:20.500Z


@pytest.fixture
def root(tmp_path: Path) -> Path:
    repo = tmp_path / "acme" / "tiny-GGUF"
    (repo / "UD-Q4_K_XL").mkdir(parents=True)
    files = {
        "tiny-Q4_K_M.gguf": Q4,
        "tiny-Q8_0.gguf": Q8,
        "config.json": CONFIG,
        "README.md": b"# tiny\n",
        "UD-Q4_K_XL/tiny-UD-Q4_K_XL-00001-of-00002.gguf": SHARD1,
        "UD-Q4_K_XL/tiny-UD-Q4_K_XL-00002-of-00002.gguf": b"GGUF-2",
    }
    for rel, data in files.items():
        (repo / rel).write_bytes(data)
        os.utime(repo / rel, (MTIME, MTIME))
    return tmp_path


@pytest.fixture
def hf(root: Path):
    srv = HfServer(root)
    yield srv
    srv.stop()


def test_model_info(hf: HfServer):
    r = requests.get(f"{hf.url}/api/models/acme/tiny-GGUF", timeout=10)
    assert r.status_code == 200
    info = r.json()
    assert info["id"] == info["modelId"] == "acme/tiny-GGUF" and info["author"] == "acme"
    assert len(info["sha"]) == 40 and info["lastModified"] == "2023-11-14T22:13:20.500Z"
    assert info["private"] is False and "gguf" in info["tags"]
    names = [s["rfilename"] for s in info["siblings"]]
    assert sorted(names) == sorted(["README.md", "config.json", "tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf",
                                    "UD-Q4_K_XL/tiny-UD-Q4_K_XL-00001-of-00002.gguf",
                                    "UD-Q4_K_XL/tiny-UD-Q4_K_XL-00002-of-00002.gguf"])
    assert all(set(s) == {"rfilename"} for s in info["siblings"])
    blobs = requests.get(f"{hf.url}/api/models/acme/tiny-GGUF?blobs=true", timeout=10).json()
    q4 = next(s for s in blobs["siblings"] if s["rfilename"] == "tiny-Q4_K_M.gguf")
    assert q4["size"] == len(Q4) and q4["lfs"]["sha256"] == hashlib.sha256(Q4).hexdigest()
    # The same through /revision/<sha>; the sha changes when a file does.
    assert requests.get(f"{hf.url}/api/models/acme/tiny-GGUF/revision/{info['sha']}", timeout=10).json() == info
    (hf.root / "acme/tiny-GGUF/README.md").write_bytes(b"# changed\n")
    assert requests.get(f"{hf.url}/api/models/acme/tiny-GGUF", timeout=10).json()["sha"] != info["sha"]


def test_tree(hf: HfServer):
    r = requests.get(f"{hf.url}/api/models/acme/tiny-GGUF/tree/main", timeout=10)
    assert r.status_code == 200
    tree = r.json()
    assert [(e["type"], e["path"]) for e in tree] == [
        ("directory", "UD-Q4_K_XL"), ("file", "README.md"), ("file", "config.json"),
        ("file", "tiny-Q4_K_M.gguf"), ("file", "tiny-Q8_0.gguf")]
    by = {e["path"]: e for e in tree}
    assert by["UD-Q4_K_XL"]["size"] == 0 and len(by["UD-Q4_K_XL"]["oid"]) == 40
    cfg = by["config.json"]
    assert cfg == {"type": "file", "oid": git_blob_oid(CONFIG), "size": len(CONFIG), "path": "config.json"}
    q4 = by["tiny-Q4_K_M.gguf"]
    sha = hashlib.sha256(Q4).hexdigest()
    ptr = lfs_pointer(sha, len(Q4))
    assert q4["size"] == len(Q4) and q4["oid"] == git_blob_oid(ptr)
    assert q4["lfs"] == {"oid": sha, "size": len(Q4), "pointerSize": len(ptr)}
    assert ptr.startswith(b"version https://git-lfs.github.com/spec/v1\noid sha256:")

    sub = requests.get(f"{hf.url}/api/models/acme/tiny-GGUF/tree/main/UD-Q4_K_XL", timeout=10).json()
    assert [e["path"] for e in sub] == ["UD-Q4_K_XL/tiny-UD-Q4_K_XL-00001-of-00002.gguf",
                                        "UD-Q4_K_XL/tiny-UD-Q4_K_XL-00002-of-00002.gguf"]
    assert all("lfs" in e for e in sub)
    rec = requests.get(f"{hf.url}/api/models/acme/tiny-GGUF/tree/main?recursive=true", timeout=10).json()
    assert len([e for e in rec if e["type"] == "file"]) == 6

    missing = requests.get(f"{hf.url}/api/models/acme/tiny-GGUF/tree/main/nope", timeout=10)
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    badrev = requests.get(f"{hf.url}/api/models/acme/tiny-GGUF/tree/v9", timeout=10)
    assert badrev.status_code == 404 and badrev.headers["X-Error-Code"] == "RevisionNotFound"


def test_lies_and_streams(hf: HfServer):
    hf.lie("acme/tiny-GGUF/tiny-Q4_K_M.gguf", size=0, lfs=None)
    hf.stream("acme/tiny-GGUF/config.json", lambda: iter([b"abc", b"def"]))
    tree = requests.get(f"{hf.url}/api/models/acme/tiny-GGUF/tree/main", timeout=10).json()
    q4 = next(e for e in tree if e["path"] == "tiny-Q4_K_M.gguf")
    assert q4["size"] == 0 and "lfs" not in q4 and q4["oid"]
    r = requests.get(f"{hf.url}/acme/tiny-GGUF/resolve/main/tiny-Q4_K_M.gguf", timeout=10)
    assert r.content == Q4, "only the listing lies"
    r = requests.get(f"{hf.url}/acme/tiny-GGUF/resolve/main/config.json", timeout=10)
    assert r.content == b"abcdef" and "Content-Length" not in r.headers
    assert hf.sent == {"acme/tiny-GGUF/config.json": 6}


def test_resolve_and_range(hf: HfServer):
    base = f"{hf.url}/acme/tiny-GGUF/resolve/main"
    sha = hashlib.sha256(Q4).hexdigest()
    r = requests.get(f"{base}/tiny-Q4_K_M.gguf", timeout=10)
    assert r.status_code == 200 and r.content == Q4
    assert r.headers["Content-Length"] == str(len(Q4)) and r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["ETag"] == f'"{sha}"' and r.headers["X-Linked-Etag"] == f'"{sha}"'
    assert r.headers["X-Linked-Size"] == str(len(Q4)) and len(r.headers["X-Repo-Commit"]) == 40
    h = requests.head(f"{base}/tiny-Q4_K_M.gguf", timeout=10)
    assert h.status_code == 200 and h.headers["Content-Length"] == str(len(Q4)) and h.content == b""

    cfg = requests.get(f"{base}/config.json", timeout=10)
    assert cfg.content == CONFIG and cfg.headers["ETag"] == f'"{git_blob_oid(CONFIG)}"'
    assert "X-Linked-Etag" not in cfg.headers
    nested = requests.get(f"{base}/UD-Q4_K_XL/tiny-UD-Q4_K_XL-00001-of-00002.gguf", timeout=10)
    assert nested.content == SHARD1

    for rng, (a, b) in {"bytes=1000-": (1000, len(Q4) - 1), "bytes=10-19": (10, 19),
                        "bytes=-100": (len(Q4) - 100, len(Q4) - 1), "bytes=0-999999": (0, len(Q4) - 1)}.items():
        p = requests.get(f"{base}/tiny-Q4_K_M.gguf", headers={"Range": rng}, timeout=10)
        assert p.status_code == 206, rng
        assert p.headers["Content-Range"] == f"bytes {a}-{b}/{len(Q4)}" and p.content == Q4[a:b + 1]
    bad = requests.get(f"{base}/tiny-Q4_K_M.gguf", headers={"Range": f"bytes={len(Q4)}-"}, timeout=10)
    assert bad.status_code == 416 and bad.headers["Content-Range"] == f"bytes */{len(Q4)}"

    e = requests.get(f"{base}/nope.gguf", timeout=10)
    assert e.status_code == 404 and e.headers["X-Error-Code"] == "EntryNotFound"
    assert e.json() == {"error": "Entry not found"}
    for url in (f"{hf.url}/acme/none/resolve/main/x", f"{hf.url}/api/models/acme/none",
                f"{hf.url}/api/models/acme/none/tree/main"):
        e = requests.get(url, timeout=10)
        assert e.status_code == 404 and e.headers["X-Error-Code"] == "RepoNotFound", url
        assert e.json() == {"error": "Repository not found"}
    assert [s for _, _, s in hf.requests][:2] == [200, 200]


def test_token(root: Path):
    with HfServer(root, token="hf_secret") as hf:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            for url in (f"{hf.url}/api/models/acme/tiny-GGUF", f"{hf.url}/api/models/acme/tiny-GGUF/tree/main",
                        f"{hf.url}/acme/tiny-GGUF/resolve/main/config.json"):
                r = requests.get(url, headers=headers, timeout=10)
                assert r.status_code == 401, url
                assert r.json() == {"error": "Invalid username or password."}
        ok = {"Authorization": "Bearer hf_secret"}
        assert requests.get(f"{hf.url}/api/models/acme/tiny-GGUF", headers=ok, timeout=10).json()["private"]
        assert requests.get(f"{hf.url}/acme/tiny-GGUF/resolve/main/config.json", headers=ok,
                            timeout=10).content == CONFIG
        assert hf.request_headers[-1]["Authorization"] == "Bearer hf_secret"
    with HfServer(root, token="t", protected=["acme/other"]) as hf:  # only listed repos need the token
        assert requests.get(f"{hf.url}/api/models/acme/tiny-GGUF", timeout=10).status_code == 200


def test_redirect_lfs(root: Path):
    with HfServer(root, redirect_lfs=True, token="t") as hf:
        auth = {"Authorization": "Bearer t"}
        r = requests.get(f"{hf.url}/acme/tiny-GGUF/resolve/main/tiny-Q8_0.gguf", headers=auth,
                         allow_redirects=False, timeout=10)
        sha = hashlib.sha256(Q8).hexdigest()
        assert r.status_code == 302 and r.headers["Location"] == f"{hf.url}/_cdn/{sha}/tiny-Q8_0.gguf"
        assert r.headers["X-Linked-Etag"] == f'"{sha}"' and r.headers["X-Linked-Size"] == str(len(Q8))
        cdn = requests.get(r.headers["Location"], headers={"Range": "bytes=5-"}, timeout=10)  # no token needed
        assert cdn.status_code == 206 and cdn.content == Q8[5:]
        assert requests.get(f"{hf.url}/acme/tiny-GGUF/resolve/main/tiny-Q8_0.gguf", headers=auth,
                            timeout=10).content == Q8
        # Small non-LFS files are served directly.
        assert requests.get(f"{hf.url}/acme/tiny-GGUF/resolve/main/config.json", headers=auth,
                            allow_redirects=False, timeout=10).status_code == 200


def test_cli(root: Path):
    proc = subprocess.Popen([sys.executable, str(HERE / "hf_server.py"), "--port", "0", "--root", str(root),
                             "--token", "tok"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        assert requests.get(f"{url}/api/models/acme/tiny-GGUF", timeout=10).status_code == 401
        r = requests.get(f"{url}/api/models/acme/tiny-GGUF/tree/main", headers={"Authorization": "Bearer tok"},
                         timeout=10)
        assert r.status_code == 200 and len(r.json()) == 5
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
