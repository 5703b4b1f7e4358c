#!/usr/bin/env python3
"""A local stand-in for the parts of Hugging Face's HTTP API that a model pull uses (stdlib only).

    python hf_server.py --port P --root DIR [--token T] [--host 127.0.0.1] [--redirect-lfs]

or, from Python, `HfServer(root, token=None)` (`.url`, `.port`, `.stop()`, `.requests`, `.request_headers`).

DIR holds repositories as `DIR/<org>/<repo>/<files...>` (sub-directories allowed). Everything is computed from
the files on each request, so a test may add, change or remove files while the server runs. Endpoints, shaped
like huggingface.co's:

- `GET /api/models/<org>/<repo>` (also `/api/models/<org>/<repo>/revision/<rev>`): model info
  `{"_id","id","modelId","author","sha","lastModified","createdAt","private","gated","disabled","downloads","likes",
  "tags","usedStorage","siblings":[{"rfilename"}]}`; with `?blobs=true` each sibling also has `size`, `blobId` and
  (LFS files) `lfs: {"sha256","size","pointerSize"}`.
- `GET /api/models/<org>/<repo>/tree/<rev>[/<dir>]` (`?recursive=true` for the whole subtree): a JSON list of
  `{"type": "file"|"directory", "oid", "size", "path"}`, files stored in LFS also with
  `"lfs": {"oid": <sha256 hex>, "size", "pointerSize"}`. Directories first, then files, each sorted by path.
- `GET|HEAD /<org>/<repo>/resolve/<rev>/<path>`: the file with `Content-Length`, `ETag` (quoted; the sha256 for
  LFS files, the git blob sha1 otherwise), `X-Repo-Commit`, `Accept-Ranges: bytes`, `Content-Disposition`, and for
  LFS files `X-Linked-Etag` / `X-Linked-Size`. `Range: bytes=a-b | a- | -n` gives 206 + `Content-Range`; an
  unsatisfiable range 416 + `Content-Range: bytes */SIZE`. With `redirect_lfs`, LFS files answer 302 to
  `/_cdn/<sha256>/<name>` on this server (like HF's redirect to its CDN; that URL needs no token).

`<rev>` is `main` or the repo's `sha` (anything else: 404 `RevisionNotFound`). The repo sha is the sha1 of its
file list, so it changes when any file changes; `lastModified` is the newest file mtime (UTC, millisecond
precision), so a test can pin it with os.utime for deterministic artifacts.

Errors, as huggingface.co answers them (JSON `{"error": ...}` plus `X-Error-Code` / `X-Error-Message`):
- unknown repo: 404 `RepoNotFound` "Repository not found"; missing file: 404 `EntryNotFound` "Entry not found".
- with a token set: a missing or wrong `Authorization: Bearer <token>` gets 401 "Invalid username or password."
  (on every route except `/_cdn/`). `protected=[...]` limits that to some repos (the others stay public).

LFS decision: by extension like HF's default .gitattributes (*.gguf, *.safetensors, *.bin, *.pt, *.onnx, ...) or
any file over 10 MiB. Git object ids are real: sha1("blob N\\0" + content) for regular files, the same over the LFS
pointer text for LFS files (`pointerSize` is that text's length).

A hostile hub, for attack tests: `.lie("org/repo/path", size=0, oid=..., lfs=None, ...)` replaces fields of that
file's tree entry (None removes a field; everything else stays true), and `.stream("org/repo/path", chunks)` serves
`chunks()` (an iterable of bytes) as the file's body instead of its content, with no `Content-Length` (the end of
the body is the connection's close); `.sent["org/repo/path"]` counts the bytes of it written.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import os
import signal
import sys
import threading
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".pkl",
                ".pickle", ".npy", ".npz", ".tflite", ".ot", ".model", ".zip", ".tar", ".tgz", ".gz", ".xz",
                ".zst", ".7z", ".arrow", ".parquet", ".joblib", ".mlmodel", ".dduf", ".wasm")
LFS_MIN_SIZE = 10 * 1024 * 1024
TEXT_SUFFIXES = {".json": "application/json", ".jinja": "text/plain", ".txt": "text/plain", ".md": "text/markdown",
                 ".py": "text/x-python", ".yaml": "text/yaml", ".yml": "text/yaml"}


def is_lfs(path: str, size: int) -> bool:
    return path.lower().endswith(LFS_SUFFIXES) or size > LFS_MIN_SIZE


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def iso_ms(ts: float) -> str:
    """HF's timestamp format: `2024-05-01T12:34:56.000Z`."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{int(ts * 1000) % 1000:03d}Z"


@dataclass(frozen=True)
class RepoEntry:
    path: str  # relative, with "/"
    size: int
    oid: str  # git blob sha1 (of the pointer for LFS files)
    sha256: str | None  # set for LFS files
    pointer_size: int | None
    mtime: float

    @property
    def etag(self) -> str:
        return self.sha256 or self.oid


class Logged(NamedTuple):
    method: str
    path: str  # without the query string
    status: int


class _Cache:
    """Hashes of files keyed by (path, size, mtime_ns), so big files are hashed once."""

    def __init__(self) -> None:
        self._d: dict[tuple[str, int, int], tuple[str, str]] = {}
        self._lock = threading.Lock()

    def hashes(self, f: Path, st: os.stat_result) -> tuple[str, str]:
        key = (str(f), st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._d.get(key)
        if hit:
            return hit
        sha1 = hashlib.sha1(b"blob %d\0" % st.st_size)
        sha256 = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sha1.update(chunk)
                sha256.update(chunk)
        val = (sha1.hexdigest(), sha256.hexdigest())
        with self._lock:
            self._d[key] = val
        return val


class HfServer:
    """The stand-in on `host:port` (0 = a free port), serving `root` from a background thread; over HTTPS with
    `tls=(cert.pem, key.pem)`."""

    def __init__(self, root: Path | str, token: str | None = None, port: int = 0, host: str = "127.0.0.1",
                 redirect_lfs: bool = False, protected: list[str] | None = None,
                 tls: tuple[Path, Path] | None = None):
        self.root = Path(root)
        self.token = token
        self.redirect_lfs = redirect_lfs
        self.protected = set(protected) if protected is not None else None
        self.requests: list[Logged] = []
        self.request_headers: list[dict[str, str]] = []
        self.lies: dict[str, dict[str, Any]] = {}
        self.streams: dict[str, Callable[[], Iterable[bytes]]] = {}
        self.sent: dict[str, int] = {}
        self._lock = threading.Lock()
        self._cache = _Cache()
        owner = self

        class Handler(_HfHandler):
            server_owner = owner

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"hf-server-{self.port}")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "HfServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def lie(self, file: str, **fields: Any) -> "HfServer":
        """List `file` ("org/repo/path") with these tree-entry fields instead of the true ones (None: no such
        field)."""
        self.lies.setdefault(file, {}).update(fields)
        return self

    def stream(self, file: str, chunks: Callable[[], Iterable[bytes]]) -> "HfServer":
        """Serve `chunks()` as `file`'s body ("org/repo/path"), without a Content-Length."""
        self.streams[file] = chunks
        return self

    def _count(self, file: str, n: int) -> None:
        with self._lock:
            self.sent[file] = self.sent.get(file, 0) + n

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def _log(self, method: str, path: str, status: int, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(Logged(method, path, status))
            self.request_headers.append(headers)

    # --- repository model -------------------------------------------------------------------------------
    def repo_dir(self, repo_id: str) -> Path | None:
        parts = repo_id.split("/")
        if len(parts) != 2 or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            return None
        d = self.root / parts[0] / parts[1]
        return d if d.is_dir() else None

    def entries(self, repo_dir: Path) -> list[RepoEntry]:
        out = []
        for f in sorted(repo_dir.rglob("*")):
            rel = f.relative_to(repo_dir).as_posix()
            if not f.is_file() or any(part.startswith(".git") for part in rel.split("/")):
                continue
            st = f.stat()
            sha1, sha256 = self._cache.hashes(f, st)
            if is_lfs(rel, st.st_size):
                ptr = lfs_pointer(sha256, st.st_size)
                out.append(RepoEntry(rel, st.st_size, git_blob_oid(ptr), sha256, len(ptr), st.st_mtime))
            else:
                out.append(RepoEntry(rel, st.st_size, sha1, None, None, st.st_mtime))
        return out

    @staticmethod
    def repo_sha(entries: list[RepoEntry]) -> str:
        h = hashlib.sha1()
        for e in entries:
            h.update(f"{e.path}\0{e.oid}\n".encode())
        return h.hexdigest()

    def needs_token(self, repo_id: str) -> bool:
        return self.token is not None and (self.protected is None or repo_id in self.protected)


class _HfError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class _HfHandler(BaseHTTPRequestHandler):
    server_owner: HfServer
    protocol_version = "HTTP/1.1"
    timeout = 120

    def log_message(self, format: str, *args: Any) -> None:  # quiet; HfServer.requests is the log
        pass

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _handle(self, head: bool) -> None:
        s = self.server_owner
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        query = dict(urllib.parse.parse_qsl(split.query))
        self._status = 0
        try:
            self._route(path, query, head)
        except _HfError as e:
            self._send_error(e, head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        s._log(self.command, path, self._status, dict(self.headers.items()))

    # --- routing ----------------------------------------------------------------------------------------
    def _route(self, path: str, query: dict[str, str], head: bool) -> None:
        s = self.server_owner
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 3 and parts[0] == "_cdn":  # /_cdn/<sha256>/<name>: the "CDN" an LFS redirect points at
            self._serve_cdn(parts[1], head)
            return
        if len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
            repo_id = f"{parts[2]}/{parts[3]}"
            rest = parts[4:]
            repo_dir = self._repo(repo_id)
            entries = s.entries(repo_dir)
            sha = s.repo_sha(entries)
            if not rest:
                self._send_json(self._model_info(repo_id, entries, sha, query), head, sha)
                return
            if rest[0] == "revision" and len(rest) == 2:
                self._check_rev(rest[1], sha)
                self._send_json(self._model_info(repo_id, entries, sha, query), head, sha)
                return
            if rest[0] == "tree" and len(rest) >= 2:
                self._check_rev(rest[1], sha)
                sub = "/".join(rest[2:])
                recursive = query.get("recursive", "").lower() in ("1", "true")
                tree = self._tree(entries, sub, recursive, rest[1])
                for item in tree:
                    for k, v in s.lies.get(f"{repo_id}/{item['path']}", {}).items():
                        if v is None:
                            item.pop(k, None)
                        else:
                            item[k] = v
                self._send_json(tree, head, sha)
                return
            raise _HfError(404, "Not Found")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id = f"{parts[0]}/{parts[1]}"
            repo_dir = self._repo(repo_id)
            entries = s.entries(repo_dir)
            sha = s.repo_sha(entries)
            self._check_rev(parts[3], sha)
            rel = "/".join(parts[4:])
            entry = next((e for e in entries if e.path == rel), None)
            if entry is None:
                raise _HfError(404, "Entry not found", "EntryNotFound")
            key = f"{repo_id}/{rel}"
            if key in s.streams:
                self._send_stream(key, s.streams[key](), head)
                return
            self._serve_file(repo_dir, entry, sha, head)
            return
        raise _HfError(404, "Not Found")

    def _repo(self, repo_id: str) -> Path:
        s = self.server_owner
        if s.needs_token(repo_id):
            auth = self.headers.get("Authorization", "")
            if auth != f"Bearer {s.token}":
                raise _HfError(401, "Invalid username or password.")
        d = s.repo_dir(repo_id)
        if d is None:
            raise _HfError(404, "Repository not found", "RepoNotFound")
        return d

    @staticmethod
    def _check_rev(rev: str, sha: str) -> None:
        if rev not in ("main", sha):
            raise _HfError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # --- JSON routes ------------------------------------------------------------------------------------
    def _model_info(self, repo_id: str, entries: list[RepoEntry], sha: str, query: dict[str, str]) -> dict:
        s = self.server_owner
        last = max((e.mtime for e in entries), default=0.0)
        blobs = query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for e in entries:
            sib: dict[str, Any] = {"rfilename": e.path}
            if blobs:
                sib["size"] = e.size
                sib["blobId"] = e.oid
                if e.sha256:
                    sib["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
            siblings.append(sib)
        tags = sorted({t for e in entries for t in (("gguf",) if e.path.endswith(".gguf") else ("safetensors",)
                                                    if e.path.endswith(".safetensors") else ())})
        return {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": sha,
            "lastModified": iso_ms(last),
            "createdAt": iso_ms(min((e.mtime for e in entries), default=0.0)),
            "private": s.needs_token(repo_id),
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "usedStorage": sum(e.size for e in entries),
            "siblings": siblings,
        }

    @staticmethod
    def _tree(entries: list[RepoEntry], sub: str, recursive: bool, rev: str) -> list[dict]:
        sub = sub.strip("/")
        prefix = sub + "/" if sub else ""
        if sub and not any(e.path.startswith(prefix) for e in entries):
            raise _HfError(404, f'{sub} does not exist on "{rev}"', "EntryNotFound")
        dirs: dict[str, list[RepoEntry]] = {}
        files = []
        for e in entries:
            if not e.path.startswith(prefix):
                continue
            rest = e.path[len(prefix):]
            segs = rest.split("/")
            # every directory level between `sub` and the file (only the first one unless recursive)
            for i in range(1, len(segs) if recursive else min(2, len(segs))):
                dirs.setdefault(prefix + "/".join(segs[:i]), []).append(e)
            if recursive or len(segs) == 1:
                files.append(e)
        out: list[dict] = []
        for d in sorted(dirs):
            oid = hashlib.sha1("".join(f"{e.path}\0{e.oid}\n" for e in dirs[d]).encode()).hexdigest()
            out.append({"type": "directory", "oid": oid, "size": 0, "path": d})
        for e in sorted(files, key=lambda e: e.path):
            item: dict[str, Any] = {"type": "file", "oid": e.oid, "size": e.size, "path": e.path}
            if e.sha256:
                item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
            out.append(item)
        return out

    # --- files ------------------------------------------------------------------------------------------
    def _serve_cdn(self, sha256: str, head: bool) -> None:
        s = self.server_owner
        for org in (s.root.iterdir() if s.root.is_dir() else []):
            for repo in (org.iterdir() if org.is_dir() else []):
                if not repo.is_dir():
                    continue
                for e in s.entries(repo):
                    if e.sha256 == sha256:
                        self._send_file(repo / e.path, e, None, head, linked=False)
                        return
        raise _HfError(404, "Entry not found", "EntryNotFound")

    def _serve_file(self, repo_dir: Path, e: RepoEntry, sha: str, head: bool) -> None:
        s = self.server_owner
        if e.sha256 and s.redirect_lfs:
            name = urllib.parse.quote(e.path.rsplit("/", 1)[-1])
            self._status = 302
            self.send_response(302)
            self.send_header("Location", f"{s.url}/_cdn/{e.sha256}/{name}")
            self.send_header("ETag", f'"{e.oid}"')
            self.send_header("X-Repo-Commit", sha)
            self.send_header("X-Linked-Etag", f'"{e.sha256}"')
            self.send_header("X-Linked-Size", str(e.size))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_file(repo_dir / e.path, e, sha, head, linked=bool(e.sha256))

    def _send_stream(self, key: str, chunks: Iterable[bytes], head: bool) -> None:
        self._status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if head:
            return
        for chunk in chunks:
            self.wfile.write(chunk)
            self.server_owner._count(key, len(chunk))

    def _send_file(self, f: Path, e: RepoEntry, sha: str | None, head: bool, linked: bool) -> None:
        size = e.size
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng is not None:
            parsed = parse_range(rng, size)
            if parsed == "unsatisfiable":
                self._status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if parsed is not None:
                start, end = parsed
                status = 206
        name = e.path.rsplit("/", 1)[-1]
        ctype = TEXT_SUFFIXES.get(Path(name).suffix.lower(), "application/octet-stream")
        if ctype.startswith("text/") or ctype == "application/json":
            ctype += "; charset=utf-8"
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(end - start + 1 if size else 0))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{e.etag}"')
        self.send_header("Last-Modified", email.utils.formatdate(e.mtime, usegmt=True))
        self.send_header("Content-Disposition",
                         f"inline; filename*=UTF-8''{urllib.parse.quote(name)}; filename=\"{name}\";")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if sha is not None:
            self.send_header("X-Repo-Commit", sha)
        if linked:
            self.send_header("X-Linked-Etag", f'"{e.sha256}"')
            self.send_header("X-Linked-Size", str(size))
        self.end_headers()
        if head or size == 0:
            return
        with open(f, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = fh.read(min(left, 1 << 16))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    # --- responses --------------------------------------------------------------------------------------
    def _send_json(self, obj: Any, head: bool, sha: str | None = None) -> None:
        body = json.dumps(obj).encode()
        self._status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if sha is not None:
            self.send_header("X-Repo-Commit", sha)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_error(self, e: _HfError, head: bool) -> None:
        body = json.dumps({"error": e.message}).encode()
        self._status = e.status
        self.send_response(e.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if e.code:
            self.send_header("X-Error-Code", e.code)
        self.send_header("X-Error-Message", e.message)
        if e.status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="Authentication required", charset="UTF-8"')
        self.end_headers()
        if not head:
            self.wfile.write(body)


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive for one `bytes=` range; "unsatisfiable"; or None to ignore it (serve 200): a
    malformed header or several ranges."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return (max(0, size - n), size - 1) if size else "unsatisfiable"
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or start < 0:
        return "unsatisfiable"
    if end < start:
        return None
    return start, min(end, size - 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="port (0: a free one; the chosen URL is printed)")
    ap.add_argument("--root", required=True, type=Path, help="DIR holding <org>/<repo>/<files>")
    ap.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--redirect-lfs", action="store_true", help="302 LFS files to /_cdn/ like huggingface.co")
    args = ap.parse_args(argv)
    srv = HfServer(args.root, token=args.token, port=args.port, host=args.host, redirect_lfs=args.redirect_lfs)
    print(f"listening on {srv.url}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
