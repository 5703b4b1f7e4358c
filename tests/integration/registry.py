"""A real OCI registry for the push/pull tests, low-level OCI distribution helpers, and a fault-injecting proxy.

What lives here (stdlib + requests only; no supervisor needed):
- `Registry`: Debian's `docker-registry` (the CNCF distribution registry 2.8.2) started on 127.0.0.1:<free port>
  with a generated YAML config, filesystem storage in a temp dir, deletes enabled, optional htpasswd basic auth.
  The binary comes from `DMR_REGISTRY_BIN` or PATH; `scripts/registry-env.sh` installs it.
- Helpers that speak the distribution API directly with `requests`, so tests can seed or inspect a registry
  independently of the Rust client: `push_blob`, `push_manifest`, `get_manifest`, `get_blob`, `blob_exists`,
  `list_tags`, `delete_manifest`, and `build_dmr_gguf_artifact` / `push_dmr_gguf_model`, which produce exactly
  Docker Model Runner's artifact shape (OCI image manifest, config `application/vnd.docker.ai.model.config.v0.1+json`,
  layers `application/vnd.docker.ai.gguf.v3` (+ license, chat template), see docs reference section 5).
  Every helper takes a `target`: a `Registry`, a `FaultProxy` (anything with `.url` and `.auth`) or a base URL.
- `FaultProxy`: an HTTP/1.1 reverse proxy in front of a registry (or any upstream URL) with switchable faults:
  connection cut mid-blob (Range resumes pass), byte corruption of one blob, canned error statuses, throttling;
  it logs every request (`.requests`) and the Range headers it saw (`.ranges`).
- `TokenAuthProxy`: a FaultProxy that puts Docker Hub's token auth in front of an open registry: `/v2/...` without a
  valid `Authorization: Bearer` answers 401 + `WWW-Authenticate: Bearer realm=".../token",service=...,scope=...`,
  and its own `GET /token?service=&scope=` issues scoped tokens (logged in `.token_requests`).

docker-registry 2.8.2 behaviour (each point is checked by test_registry_helpers.py):
- `GET /v2/` answers 200 `{}`; with htpasswd auth 401 + `WWW-Authenticate: Basic realm="<realm>"` and
  `{"errors":[{"code":"UNAUTHORIZED",...}]}` without (or with wrong) credentials.
- Upload: `POST /v2/<repo>/blobs/uploads/` -> 202 with an ABSOLUTE `Location` built from the request's Host header
  (`http://HOST/v2/<repo>/blobs/uploads/<uuid>?_state=<signed>`), `Range: 0-0`, `Docker-Upload-UUID`; then
  `PUT <Location>&digest=sha256:...` with the bytes -> 201 (absolute `Location` of the blob, `Docker-Content-Digest`);
  a wrong digest -> 400 DIGEST_INVALID. PATCH chunks (`Content-Range: start-end`) -> 202 + a new Location.
  A monolithic `POST ...?digest=` with a body is NOT honoured: it just opens a session (202), the body is dropped.
  `POST ...?mount=<digest>&from=<repo>` of a known blob -> 201 at once.
- Blob GETs: 200 with `Accept-Ranges: bytes`, `Etag: "<digest>"`, `Docker-Content-Digest`. `Range: bytes=N-` (also
  `N-M`, `-N`) -> 206 + `Content-Range: bytes N-END/TOTAL`. A range starting AT or past the end (e.g. resuming a
  download that is already complete) -> 416 `Content-Range: bytes */TOTAL`, but with `Content-Length: TOTAL` and a
  33-byte text body ("invalid range: failed to overlap\n"), then the connection closes: never read that body.
- Manifest GET/HEAD must send an `Accept` listing `application/vnd.oci.image.manifest.v1+json`; without it (also
  with `*/*`) an OCI manifest is answered 404 MANIFEST_UNKNOWN "OCI manifest found, but accept header does not
  support OCI manifests". Responses carry `Content-Type` = the manifest's media type and `Docker-Content-Digest`.
- Manifest PUT: `Content-Type` must be the manifest's own `mediaType` (else 400 MANIFEST_INVALID); every referenced
  blob (config and layers) must already be in that repository (else 400 MANIFEST_BLOB_UNKNOWN). Arbitrary config and
  layer media types (DMR's) are accepted in an OCI image manifest.
- Unknown repo or tag on a manifest GET: 404 MANIFEST_UNKNOWN (not NAME_UNKNOWN); unknown blob: 404 BLOB_UNKNOWN;
  `tags/list` of an unknown repo: 404 NAME_UNKNOWN. DELETE of a manifest works only by digest (202; by tag: 400);
  after deleting the last one `tags/list` answers `"tags": null`.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, NamedTuple, Union

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]

START_DEADLINE = 30.0  # registry start-up until GET /v2/ answers
HTTP_TIMEOUT = 60.0

# --- media types ------------------------------------------------------------------------------------------
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# What a manifest GET accepts by default (the registry refuses to serve an OCI manifest without it).
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST])

DMR_CONFIG_V01 = "application/vnd.docker.ai.model.config.v0.1+json"
DMR_CONFIG_V02 = "application/vnd.docker.ai.model.config.v0.2+json"
CNCF_MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
GGUF_LAYER = "application/vnd.docker.ai.gguf.v3"
SAFETENSORS_LAYER = "application/vnd.docker.ai.safetensors"
DDUF_LAYER = "application/vnd.docker.ai.dduf"
MMPROJ_LAYER = "application/vnd.docker.ai.mmproj"
LICENSE_LAYER = "application/vnd.docker.ai.license"
CHAT_TEMPLATE_LAYER = "application/vnd.docker.ai.chat.template.jinja"
VLLM_CONFIG_TAR_LAYER = "application/vnd.docker.ai.vllm.config.tar"
DIR_TAR_LAYER = "application/vnd.docker.ai.dir.tar"
MODEL_FILE_LAYER = "application/vnd.docker.ai.model.file"

ANNOTATION_FILEPATH = "org.cncf.model.filepath"
ANNOTATION_FILE_METADATA = "org.cncf.model.file.metadata+json"
ANNOTATION_MEDIATYPE_UNTESTED = "org.cncf.model.file.mediatype.untested"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Compact JSON like Go's json.Marshal (no spaces, keys in the given order); digests are over these bytes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return "(no log)"


class RegistryHTTPError(AssertionError):
    """A distribution API call answered something unexpected; carries the status and body."""

    def __init__(self, what: str, resp: requests.Response, log_tail: str = ""):
        self.status = resp.status_code
        self.body = resp.text
        self.headers = dict(resp.headers)
        msg = f"{what}: HTTP {resp.status_code} {resp.text[:2000]!r}"
        if log_tail:
            msg += f"\n--- registry log tail\n{log_tail}"
        super().__init__(msg)


# ---------------------------------------------------------------------------------------------------------
# The real registry


def find_registry_binary() -> Path:
    """`DMR_REGISTRY_BIN` or `docker-registry` on PATH; fails (never skips) with the command that installs it."""
    env = os.environ.get("DMR_REGISTRY_BIN")
    found = env or shutil.which("docker-registry")
    if not found or not os.access(found, os.X_OK):
        pytest.fail(f"docker-registry not found ({'DMR_REGISTRY_BIN=' + env if env else 'not on PATH'}): "
                    f"run `{REPO}/scripts/registry-env.sh` (installs Debian's docker-registry)", pytrace=False)
    return Path(found)


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for htpasswd (the registry accepts only bcrypt): Python's bcrypt, else `htpasswd -B`."""
    try:
        import bcrypt  # scripts/requirements-test.txt
    except ImportError:
        bcrypt = None
    if bcrypt is not None:
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbB", "-C", "5", "u", password], check=True, capture_output=True, text=True)
        return out.stdout.strip().split(":", 1)[1]
    pytest.fail("no bcrypt: run scripts/python-env.sh (pins bcrypt) or install apache2-utils (htpasswd)",
                pytrace=False)


REGISTRY_CONFIG = """\
version: 0.1
log:
  level: {level}
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: {secret}
  headers:
    X-Content-Type-Options: [nosniff]
{tls}{auth}"""

TLS_CONFIG = """\
  tls:
    certificate: {cert}
    key: {key}
"""

AUTH_CONFIG = """\
auth:
  htpasswd:
    realm: {realm}
    path: {path}
"""


class Registry:
    """One docker-registry process on 127.0.0.1:<free port>; `stop()` (or the context manager) ends it.

    `workdir`: where the config, the storage (`storage/`), the htpasswd file and `registry.log` go; a fresh temp dir
    (removed by `stop()`) when omitted. `auth=("user", "pass")` turns on htpasswd basic auth; the helpers below then
    send those credentials automatically (`.auth`). `tls=(cert, key, ca)` serves HTTPS with that certificate and key
    (PEM files; `ca` verifies it for the start-up probe); the helpers then need `REQUESTS_CA_BUNDLE` set to `ca`."""

    def __init__(self, workdir: Path | None = None, auth: tuple[str, str] | None = None,
                 binary: Path | None = None, log_level: str = "info", realm: str = "dmr-test-registry",
                 tls: tuple[Path, Path, Path] | None = None):
        self.binary = binary or find_registry_binary()
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="registry-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage = self.dir / "storage"
        self.storage.mkdir(exist_ok=True)
        self.config_path = self.dir / "config.yml"
        self.log_path = self.dir / "registry.log"
        self.auth = auth
        self.realm = realm
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self.port = 0
        auth_yaml = ""
        if auth is not None:
            htpasswd = self.dir / "htpasswd"
            htpasswd.write_text(f"{auth[0]}:{bcrypt_hash(auth[1])}\n")
            auth_yaml = AUTH_CONFIG.format(realm=realm, path=htpasswd)
        last = ""
        for _ in range(3):  # the free port can be taken between probe and bind: retry on "address already in use"
            self.port = free_port()
            self.config_path.write_text(REGISTRY_CONFIG.format(
                level=log_level, root=self.storage, port=self.port, secret=secrets.token_hex(16), auth=auth_yaml,
                tls="" if tls is None else TLS_CONFIG.format(cert=tls[0], key=tls[1])))
            if self._start():
                return
            last = tail(self.log_path)
            if "address already in use" not in last:
                break
        self.stop()
        pytest.fail(f"docker-registry did not start (config {self.config_path}):\n{last}", pytrace=False)

    def _start(self) -> bool:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(self.binary), "serve", str(self.config_path)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                r = requests.get(self.url + "/v2/", timeout=2, verify=True if self.tls is None else str(self.tls[2]))
                if r.status_code in (200, 401):
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.05)
        return False

    @property
    def url(self) -> str:
        return f"{'http' if self.tls is None else 'https'}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, n: int = 4000) -> str:
        return tail(self.log_path, n)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Registry({self.url}, dir={self.dir})"


# ---------------------------------------------------------------------------------------------------------
# Distribution API helpers

Target = Union["Registry", "FaultProxy", str]


def _base(target: Target) -> str:
    return (target if isinstance(target, str) else target.url).rstrip("/")


def _auth(target: Target, auth: tuple[str, str] | None) -> tuple[str, str] | None:
    if auth is not None:
        return auth
    return None if isinstance(target, str) else getattr(target, "auth", None)


def _log_tail(target: Target) -> str:
    fn = getattr(target, "log_tail", None)
    return fn() if callable(fn) else ""


def _with_query(url: str, **params: str) -> str:
    """Append query parameters to a URL that may already carry some (the upload Location's `_state`)."""
    parts = urllib.parse.urlsplit(url)
    q = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(q)))


def push_blob(target: Target, repo: str, data: bytes, *, auth: tuple[str, str] | None = None,
              chunk_size: int | None = None) -> str:
    """Upload `data` as a blob of `repo`; returns its digest `sha256:...`.

    Monolithic by default (POST /v2/<repo>/blobs/uploads/, then PUT <Location>&digest=). With `chunk_size`,
    PATCHes `Content-Range: start-end` chunks first and closes with an empty PUT."""
    base, au = _base(target), _auth(target, auth)
    digest = sha256_digest(data)
    r = requests.post(f"{base}/v2/{repo}/blobs/uploads/", auth=au, timeout=HTTP_TIMEOUT)
    if r.status_code != 202:
        raise RegistryHTTPError(f"start upload to {repo}", r, _log_tail(target))
    location = urllib.parse.urljoin(base + "/", r.headers["Location"])
    body: bytes = data
    if chunk_size:
        for start in range(0, len(data), chunk_size):
            chunk = data[start:start + chunk_size]
            r = requests.patch(location, data=chunk, auth=au, timeout=HTTP_TIMEOUT, headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(chunk) - 1}"})
            if r.status_code != 202:
                raise RegistryHTTPError(f"PATCH chunk at {start} of {digest}", r, _log_tail(target))
            location = urllib.parse.urljoin(base + "/", r.headers["Location"])
        body = b""
    r = requests.put(_with_query(location, digest=digest), data=body, auth=au, timeout=HTTP_TIMEOUT,
                     headers={"Content-Type": "application/octet-stream"})
    if r.status_code != 201:
        raise RegistryHTTPError(f"finish upload of {digest} to {repo}", r, _log_tail(target))
    got = r.headers.get("Docker-Content-Digest")
    assert got in (None, digest), f"registry stored {got}, expected {digest}"
    return digest


def push_manifest(target: Target, repo: str, ref: str, manifest: dict | bytes, media_type: str = OCI_MANIFEST, *,
                  auth: tuple[str, str] | None = None) -> str:
    """PUT a manifest under a tag or digest `ref`; returns its digest (sha256 of the exact bytes sent).

    A dict is serialised compactly (`canonical_json`); pass bytes to control the exact encoding."""
    raw = manifest if isinstance(manifest, bytes) else canonical_json(manifest)
    digest = sha256_digest(raw)
    r = requests.put(f"{_base(target)}/v2/{repo}/manifests/{ref}", data=raw, auth=_auth(target, auth),
                     headers={"Content-Type": media_type}, timeout=HTTP_TIMEOUT)
    if r.status_code != 201:
        raise RegistryHTTPError(f"PUT manifest {repo}:{ref}", r, _log_tail(target))
    got = r.headers.get("Docker-Content-Digest")
    assert got == digest, f"registry says manifest digest {got}, computed {digest}"
    return digest


@dataclass
class FetchedManifest:
    raw: bytes
    digest: str
    media_type: str  # the response Content-Type

    def json(self) -> dict:
        return json.loads(self.raw)


def get_manifest_raw(target: Target, repo: str, ref: str, *, accept: str = MANIFEST_ACCEPT,
                     auth: tuple[str, str] | None = None) -> FetchedManifest:
    """GET a manifest by tag or digest, checking that the body hashes to `Docker-Content-Digest`."""
    r = requests.get(f"{_base(target)}/v2/{repo}/manifests/{ref}", auth=_auth(target, auth),
                     headers={"Accept": accept}, timeout=HTTP_TIMEOUT)
    if r.status_code != 200:
        raise RegistryHTTPError(f"GET manifest {repo}:{ref}", r, _log_tail(target))
    digest = sha256_digest(r.content)
    hdr = r.headers.get("Docker-Content-Digest")
    assert hdr in (None, digest), f"manifest body hashes to {digest}, header says {hdr}"
    if ref.startswith("sha256:"):
        assert ref == digest, f"asked for {ref}, got a manifest hashing to {digest}"
    return FetchedManifest(r.content, digest, r.headers.get("Content-Type", ""))


def get_manifest(target: Target, repo: str, ref: str, *, accept: str = MANIFEST_ACCEPT,
                 auth: tuple[str, str] | None = None) -> tuple[dict, str]:
    """(parsed manifest, digest) for a tag or digest."""
    m = get_manifest_raw(target, repo, ref, accept=accept, auth=auth)
    return m.json(), m.digest


def get_blob(target: Target, repo: str, digest: str, *, start: int | None = None,
             auth: tuple[str, str] | None = None) -> bytes:
    """A blob's bytes (verified against `digest` when fetched whole); `start` sends `Range: bytes=start-`."""
    headers = {"Range": f"bytes={start}-"} if start is not None else {}
    r = requests.get(f"{_base(target)}/v2/{repo}/blobs/{digest}", auth=_auth(target, auth), headers=headers,
                     timeout=HTTP_TIMEOUT)
    if r.status_code != (206 if start is not None else 200):
        raise RegistryHTTPError(f"GET blob {repo}@{digest}", r, _log_tail(target))
    if start is None:
        got = sha256_digest(r.content)
        assert got == digest, f"blob {digest} came back as {got} ({len(r.content)} bytes)"
    return r.content


def blob_exists(target: Target, repo: str, digest: str, *, auth: tuple[str, str] | None = None) -> bool:
    r = requests.head(f"{_base(target)}/v2/{repo}/blobs/{digest}", auth=_auth(target, auth), timeout=HTTP_TIMEOUT)
    if r.status_code not in (200, 404):
        raise RegistryHTTPError(f"HEAD blob {repo}@{digest}", r, _log_tail(target))
    return r.status_code == 200


def list_tags(target: Target, repo: str, *, auth: tuple[str, str] | None = None) -> list[str]:
    """The repo's tags ([] for an unknown repo)."""
    r = requests.get(f"{_base(target)}/v2/{repo}/tags/list", auth=_auth(target, auth), timeout=HTTP_TIMEOUT)
    if r.status_code == 404:
        return []
    if r.status_code != 200:
        raise RegistryHTTPError(f"GET tags of {repo}", r, _log_tail(target))
    return sorted(r.json().get("tags") or [])


def delete_manifest(target: Target, repo: str, digest: str, *, auth: tuple[str, str] | None = None) -> None:
    """DELETE by digest (the registry refuses deletes by tag); removes every tag pointing at it."""
    r = requests.delete(f"{_base(target)}/v2/{repo}/manifests/{digest}", auth=_auth(target, auth),
                        timeout=HTTP_TIMEOUT)
    if r.status_code != 202:
        raise RegistryHTTPError(f"DELETE manifest {repo}@{digest}", r, _log_tail(target))


# ---------------------------------------------------------------------------------------------------------
# Docker Model Runner artifacts


@dataclass
class Artifact:
    """An OCI artifact ready to push: the manifest bytes and every blob it references (config included)."""

    manifest: dict
    manifest_bytes: bytes
    config: dict
    config_bytes: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes, config first, then layers in order
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        """The manifest digest, which DMR uses as the model ID."""
        return sha256_digest(self.manifest_bytes)

    @property
    def layer_digests(self) -> list[str]:
        return [layer["digest"] for layer in self.manifest["layers"]]


def human_size(n: int) -> str:
    """DMR's `size` string: two decimals and a binary unit ("256.35MiB")."""
    size, units = float(n), ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while size >= 1024 and i < len(units) - 1:
        size /= 1024
        i += 1
    return f"{size:.2f}{units[i]}"


def _bytes(x: bytes | str) -> bytes:
    return x.encode() if isinstance(x, str) else x


def layer_descriptor(data: bytes, media_type: str, filename: str | None, created: str) -> dict:
    """A layer descriptor as DMR writes it: mediaType, size, digest, and (with `filename`) the
    org.cncf.model.* annotations (file path, file metadata JSON, mediatype.untested=false)."""
    desc: dict[str, Any] = {"mediaType": media_type, "size": len(data), "digest": sha256_digest(data)}
    if filename is not None:
        meta = {"name": filename, "mode": 0o644, "uid": 0, "gid": 0, "size": len(data), "mtime": created,
                "typeflag": 0}
        desc["annotations"] = {
            ANNOTATION_FILEPATH: filename,
            ANNOTATION_FILE_METADATA: json.dumps(meta, separators=(",", ":")),
            ANNOTATION_MEDIATYPE_UNTESTED: "false",
        }
    return desc


def build_dmr_artifact(layers: list[tuple[bytes, str, str | None]], config_fields: dict[str, Any],
                       created: str = "1970-01-01T00:00:00Z", config_media_type: str = DMR_CONFIG_V01,
                       annotations: bool = True) -> Artifact:
    """A DMR model artifact from `(bytes, layer media type, file name)` layers; `config_fields` is the inner
    `config` object (format, quantization, parameters, architecture, size, gguf, context_size, ...)."""
    descs = [layer_descriptor(data, mt, name if annotations else None, created) for data, mt, name in layers]
    config = {
        "config": config_fields,
        "descriptor": {"created": created},
        "rootfs": {"type": "rootfs", "diff_ids": [d["digest"] for d in descs]},
    }
    config_bytes = canonical_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_media_type, "size": len(config_bytes), "digest": sha256_digest(config_bytes)},
        "layers": descs,
    }
    blobs = {sha256_digest(config_bytes): config_bytes}
    for data, _, _ in layers:
        blobs[sha256_digest(data)] = data
    return Artifact(manifest, canonical_json(manifest), config, config_bytes, blobs)


def build_dmr_gguf_artifact(gguf_bytes: bytes, license: bytes | str | list[bytes | str] | None = None,
                            chat_template: bytes | str | None = None, created: str = "1970-01-01T00:00:00Z", *,
                            config: dict[str, Any] | None = None, mmproj: bytes | None = None,
                            gguf_name: str = "model.gguf", annotations: bool = True) -> Artifact:
    """DMR's V0.1 GGUF artifact: layers gguf, then license(s), then mmproj, then the chat template.

    `config` adds/overrides fields of the inner config object (default: `{"format": "gguf", "size": ...}`)."""
    layers: list[tuple[bytes, str, str | None]] = [(gguf_bytes, GGUF_LAYER, gguf_name)]
    licenses = license if isinstance(license, list) else ([license] if license is not None else [])
    for i, lic in enumerate(licenses):
        layers.append((_bytes(lic), LICENSE_LAYER, "LICENSE" if i == 0 else f"LICENSE-{i}"))
    if mmproj is not None:
        layers.append((mmproj, MMPROJ_LAYER, "model.mmproj"))
    if chat_template is not None:
        layers.append((_bytes(chat_template), CHAT_TEMPLATE_LAYER, "template.jinja"))
    fields: dict[str, Any] = {"format": "gguf", "size": human_size(len(gguf_bytes))}
    fields.update(config or {})
    return build_dmr_artifact(layers, fields, created, DMR_CONFIG_V01, annotations)


def push_artifact(target: Target, repo: str, ref: str, artifact: Artifact, *,
                  auth: tuple[str, str] | None = None) -> str:
    """Upload every blob (config and layers), then the manifest under `ref`; returns the manifest digest."""
    for data in artifact.blobs.values():
        push_blob(target, repo, data, auth=auth)
    digest = push_manifest(target, repo, ref, artifact.manifest_bytes, artifact.media_type, auth=auth)
    assert digest == artifact.digest
    return digest


def push_dmr_gguf_model(target: Target, repo: str, tag: str, gguf_bytes: bytes,
                        license: bytes | str | list[bytes | str] | None = None,
                        chat_template: bytes | str | None = None, created: str = "1970-01-01T00:00:00Z",
                        **kw: Any) -> str:
    """Build (see `build_dmr_gguf_artifact`, extra keywords go there) and push a DMR GGUF model as `repo:tag`;
    returns the manifest digest (= DMR's model ID)."""
    auth = kw.pop("auth", None)
    art = build_dmr_gguf_artifact(gguf_bytes, license, chat_template, created, **kw)
    return push_artifact(target, repo, tag, art, auth=auth)


# ---------------------------------------------------------------------------------------------------------
# Fault-injecting reverse proxy

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
              "transfer-encoding", "upgrade", "proxy-connection"}
ERROR_CODES = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "DENIED", 404: "NAME_UNKNOWN", 405: "UNSUPPORTED",
               416: "BLOB_UPLOAD_INVALID", 429: "TOOMANYREQUESTS", 500: "UNKNOWN", 502: "UNKNOWN",
               503: "UNAVAILABLE"}
ERROR_MESSAGES = {"UNAUTHORIZED": "authentication required", "DENIED": "requested access to the resource is denied",
                  "NAME_UNKNOWN": "repository name not known to registry", "MANIFEST_UNKNOWN": "manifest unknown",
                  "BLOB_UNKNOWN": "blob unknown to registry", "TOOMANYREQUESTS": "too many requests",
                  "UNKNOWN": "unknown error", "UNAVAILABLE": "service unavailable"}


def is_blob_get(method: str, path: str) -> bool:
    return method == "GET" and path.startswith("/v2/") and "/blobs/sha256:" in path


class ProxiedRequest(NamedTuple):
    method: str
    path: str  # without the query string
    status: int  # what the proxy answered (a cut response logs the 200/206 it started)


@dataclass
class _Fault:
    kind: str  # "fail" | "cut" | "corrupt"
    match: Callable[[str, str], bool]  # (method, path) -> applies
    times: int | None  # None = forever
    status: int = 0
    n_bytes: int = 0
    code: str = ""
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    hits: int = 0


class FaultProxy:
    """A reverse proxy on 127.0.0.1:<free port> in front of `upstream` (a Registry or a base URL).

    Everything is forwarded (method, path, query, headers, body; the response is streamed back); `Location`
    headers pointing at the upstream are rewritten to the proxy, so the registry's absolute upload URLs keep
    working. Faults (each returns self; counters are per fault; `clear()` removes them all):
      - `cut_blob_after(n, times=1)`: a blob GET without `Range` gets the full headers, n body bytes, then the
        socket is closed. Requests with `Range` pass through (so a resume works).
      - `cut_after(path_substring, n, times=1)`: the same for any GET whose path contains the substring.
      - `corrupt_blob(digest, times=None)`: blob GETs of `digest` (whole or ranged) have the bytes at blob offsets
        size//2 and size-1 inverted (same length, same headers).
      - `fail(path_substring, status, times=None, ...)`: answer `status` without contacting the upstream, with a
        registry-style `{"errors":[{"code","message"}]}` body (and `WWW-Authenticate` for 401).
      - `throttle(bytes_per_second)`: slow down response bodies (None to stop).
    Logs: `.requests` (ProxiedRequest(method, path, status)), `.request_headers` (same order), `.ranges` (every
    Range header value seen)."""

    def __init__(self, upstream: "Registry | str", auth: tuple[str, str] | None = None):
        self.upstream = upstream
        self.upstream_url = _base(upstream)
        u = urllib.parse.urlsplit(self.upstream_url)
        if u.scheme != "http":
            raise ValueError(f"FaultProxy forwards plain http only, not {self.upstream_url}")
        self._up_host, self._up_port = u.hostname or "127.0.0.1", u.port or 80
        self._up_netloc = u.netloc
        self.auth = auth if auth is not None else (None if isinstance(upstream, str) else upstream.auth)
        self.requests: list[ProxiedRequest] = []
        self.request_headers: list[dict[str, str]] = []
        self.ranges: list[str] = []
        self._faults: list[_Fault] = []
        self._throttle: int | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(self._handler_base()):  # type: ignore[misc]
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"fault-proxy-{self.port}")
        self._thread.start()

    def _handler_base(self) -> type["_ProxyHandler"]:
        """The request handler class the server runs (a subclass puts its own checks in front of `_proxy`)."""
        return _ProxyHandler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- faults -----------------------------------------------------------------------------------------
    def _add(self, f: _Fault) -> "FaultProxy":
        with self._lock:
            self._faults.append(f)
        return self

    def cut_blob_after(self, n_bytes: int, times: int = 1) -> "FaultProxy":
        return self._add(_Fault("cut", is_blob_get, times, n_bytes=n_bytes))

    def cut_after(self, path_substring: str, n_bytes: int, times: int = 1) -> "FaultProxy":
        return self._add(_Fault("cut", lambda m, p: m == "GET" and path_substring in p, times, n_bytes=n_bytes))

    def corrupt_blob(self, digest: str, times: int | None = None) -> "FaultProxy":
        return self._add(_Fault("corrupt", lambda m, p: is_blob_get(m, p) and p.endswith("/blobs/" + digest), times))

    def fail(self, path_substring: str, status: int, times: int | None = None, *, method: str | None = None,
             code: str | None = None, message: str | None = None, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> "FaultProxy":
        """`code` defaults by status (401 UNAUTHORIZED, 403 DENIED, 429 TOOMANYREQUESTS, 500 UNKNOWN,
        503 UNAVAILABLE; 404 like the real registry: MANIFEST_UNKNOWN for .../manifests/..., BLOB_UNKNOWN for
        .../blobs/..., else NAME_UNKNOWN); `method` restricts it to one method; `headers` are added (a 401 gets
        `WWW-Authenticate: Basic realm="fault-proxy"` unless given); `body` replaces the JSON error body (e.g. an
        HF-style error when the upstream is the HF stand-in)."""
        if code is None and status == 404:
            code = ("MANIFEST_UNKNOWN" if "/manifests/" in path_substring
                    else "BLOB_UNKNOWN" if "/blobs/" in path_substring else "NAME_UNKNOWN")
        code = code or ERROR_CODES.get(status, "UNKNOWN")
        hdrs = dict(headers or {})
        if status == 401:
            hdrs.setdefault("WWW-Authenticate", 'Basic realm="fault-proxy"')
        return self._add(_Fault("fail", lambda m, p: (method is None or m == method) and path_substring in p, times,
                                status=status, code=code, message=message or ERROR_MESSAGES.get(code, code),
                                headers=hdrs, body=body))

    def throttle(self, bytes_per_second: int | None) -> "FaultProxy":
        self._throttle = bytes_per_second
        return self

    def clear(self) -> "FaultProxy":
        with self._lock:
            self._faults.clear()
        self._throttle = None
        return self

    def _take(self, kind: str, method: str, path: str, cond: bool = True) -> _Fault | None:
        """The first armed fault of `kind` matching the request (its counter is consumed)."""
        if not cond:
            return None
        with self._lock:
            for f in self._faults:
                if f.kind == kind and (f.times is None or f.times > 0) and f.match(method, path):
                    if f.times is not None:
                        f.times -= 1
                    f.hits += 1
                    return f
        return None

    def _log(self, method: str, path: str, status: int, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(ProxiedRequest(method, path, status))
            self.request_headers.append(headers)

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def log_tail(self, n: int = 4000) -> str:
        lines = "\n".join(f"{r.method} {r.path} -> {r.status}" for r in self.requests[-50:])
        up = _log_tail(self.upstream) if not isinstance(self.upstream, str) else ""
        return f"--- proxy requests\n{lines}\n{up}"[-n:]

    def rewrite_location(self, value: str) -> str:
        for prefix in (self.upstream_url, f"http://{self._up_netloc}"):
            if value.startswith(prefix):
                return self.url + value[len(prefix):]
        return value

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    timeout = 120

    def log_message(self, format: str, *args: Any) -> None:  # quiet; FaultProxy.requests is the log
        pass

    def do_GET(self) -> None:
        self._proxy()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = self.headers.get("Content-Length")
        return self.rfile.read(int(n)) if n is not None else None

    def _proxy(self) -> None:
        p = self.owner
        method = self.command
        path = urllib.parse.urlsplit(self.path).path
        req_headers = {k: v for k, v in self.headers.items()}
        rng = self.headers.get("Range")
        if rng is not None:
            with p._lock:
                p.ranges.append(rng)
        body = self._read_body()

        fault = p._take("fail", method, path)
        if fault is not None:
            # Logged before answering, so a client that has its answer always finds the request logged.
            p._log(method, path, fault.status, req_headers)
            self._send_error(fault, method)
            return

        conn = http.client.HTTPConnection(p._up_host, p._up_port, timeout=HTTP_TIMEOUT)
        try:
            conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", p._up_netloc)
            for k, v in self.headers.items():
                # Expect: 100-continue was already answered here; the body is read and sent whole.
                if k.lower() not in HOP_BY_HOP and k.lower() not in ("host", "content-length", "expect"):
                    conn.putheader(k, v)
            if body is not None or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body or b"")))
            conn.endheaders(body or None)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            err = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": f"fault proxy: upstream: {e}"}]}).encode()
            p._log(method, path, 502, req_headers)
            self.send_response(502)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(err)))
            self.end_headers()
            self.wfile.write(err)
            return
        p._log(method, path, resp.status, req_headers)
        try:
            self._relay(resp, method, path, rng)
        finally:
            conn.close()

    def _send_error(self, f: _Fault, method: str) -> None:
        body = f.body if f.body is not None else json.dumps(
            {"errors": [{"code": f.code, "message": f.message, "detail": None}]}).encode()
        self.send_response(f.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for k, v in f.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _relay(self, resp: http.client.HTTPResponse, method: str, path: str, rng: str | None) -> None:
        p = self.owner
        length_hdr = resp.getheader("Content-Length")
        chunked = "chunked" in (resp.getheader("Transfer-Encoding") or "").lower()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            lk = k.lower()
            if lk in HOP_BY_HOP or lk in ("content-length", "date", "server"):
                continue
            if lk == "location":
                v = p.rewrite_location(v)
            self.send_header(k, v)
        no_body = method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        if no_body:
            if length_hdr is not None:
                self.send_header("Content-Length", length_hdr)
            self.end_headers()
            return

        ok = resp.status in (200, 206)
        cut = p._take("cut", method, path, cond=ok and rng is None)
        corrupt = p._take("corrupt", method, path, cond=ok)
        # Absolute blob offsets of the corrupted bytes: size//2 and size-1.
        start, total = 0, int(length_hdr) if length_hdr is not None else None
        if resp.status == 206:
            cr = resp.getheader("Content-Range") or ""  # bytes START-END/TOTAL
            try:
                start = int(cr.split()[1].split("-")[0])
                total = int(cr.split("/")[1])
            except (IndexError, ValueError):
                pass
        flip = {total // 2, total - 1} if (corrupt and total) else set()

        stream_chunked = length_hdr is None
        if stream_chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", length_hdr)
        self.end_headers()

        sent, pos = 0, start
        limit = cut.n_bytes if cut else None
        try:
            while True:
                want = 65536 if p._throttle is None else max(1, min(65536, p._throttle // 10))
                chunk = resp.read(want) if not chunked else resp.read1(want)
                if not chunk:
                    break
                if flip:
                    b = bytearray(chunk)
                    for off in flip:
                        if pos <= off < pos + len(b):
                            b[off - pos] ^= 0xFF
                    chunk = bytes(b)
                pos += len(chunk)
                if p._throttle:
                    time.sleep(len(chunk) / p._throttle)
                if limit is not None and sent + len(chunk) >= limit:
                    chunk = chunk[: limit - sent]
                    self._write(chunk, stream_chunked)
                    self._cut()
                    return
                self._write(chunk, stream_chunked)
                sent += len(chunk)
            if limit is not None:  # body shorter than the cut point: still cut before the end marker
                self._cut()
                return
            if stream_chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (http.client.HTTPException, OSError):
            # The client went away, or the upstream broke its own framing (docker-registry answers a Range past
            # the end with 416, the blob's full Content-Length and a 33-byte body): drop the connection too.
            self.close_connection = True

    def _write(self, chunk: bytes, chunked: bool) -> None:
        if not chunk:
            return
        if chunked:
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        else:
            self.wfile.write(chunk)

    def _cut(self) -> None:
        """Close the client connection mid-body."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------------------
# Token auth (Docker Hub's anonymous bearer token flow) in front of an open registry

TOKEN_SERVICE = "test-registry"
TOKEN_EXPIRES_IN = 300
_REPO_PATH = re.compile(r"^/v2/(?P<repo>.+?)/(?:manifests|blobs|tags)/")


class TokenRequest(NamedTuple):
    """One call of the token endpoint, as received and answered."""

    service: str | None  # the `service` parameter (None when absent)
    scope: str  # the `scope` parameters, space-joined ("" when none)
    basic_user: str | None  # the user name of the `Authorization: Basic` credentials sent; None when anonymous
    status: int  # what the token endpoint answered


def repo_of(path: str) -> str | None:
    """The repository a distribution API path is about (`/v2/a/b/manifests/x` -> `a/b`); None for `/v2/`."""
    m = _REPO_PATH.match(path)
    return m.group("repo") if m else None


def action_for(method: str) -> str:
    """The token action a request needs: `pull` for reads, `push` for anything that writes."""
    return "pull" if method in ("GET", "HEAD") else "push"


class TokenAuthProxy(FaultProxy):
    """A FaultProxy with Docker Hub's token auth in front of it (the registry itself runs without auth).

    - Any `/v2/...` request (the `/v2/` probe included) without `Authorization: Bearer <valid token>` gets 401 with
      `WWW-Authenticate: Bearer realm="<url>/token",service="<service>",scope="repository:<repo>:pull"` (`pull,push`
      for methods other than GET/HEAD; no scope on `/v2/`; `,error="invalid_token"` for a token it does not know,
      `,error="insufficient_scope"` for one that lacks the action on that repository) and a registry-style JSON
      body `{"errors":[{"code":"UNAUTHORIZED",...}]}`; the upstream is not contacted.
    - `GET /token?service=...&scope=repository:<repo>:<actions>` (scope may repeat) answers
      `{"token": T, "access_token": T, "expires_in": 300, "issued_at": ...}`; T (opaque) grants exactly the actions
      asked for, on those repositories, to anyone (anonymous push included: this is a test registry). A wrong
      `service` is refused with 400. With `token_status` set (constructor or attribute) every token request is
      refused with that status and a Docker-Hub-style `{"details": ...}` body instead.
    - `fixed_token`: a token that is valid for everything without ever being issued (a `bearer-token` the client
      already has).
    - Authorized requests go through FaultProxy's forwarding (faults, throttling, `Location` rewriting all apply);
      the `Authorization` header travels on, and the open upstream ignores it.
    Logs: `.token_requests` (TokenRequest per call of the token endpoint); `.requests` / `.request_headers` also
    hold the 401 challenges and the token calls (path `/token`), in arrival order."""

    def __init__(self, upstream: "Registry | str", *, service: str = TOKEN_SERVICE, fixed_token: str | None = None,
                 token_status: int | None = None, token_path: str = "/token"):
        self.service = service
        self.fixed_token = fixed_token
        self.token_status = token_status
        self.token_path = token_path
        self.token_requests: list[TokenRequest] = []
        self.issued: dict[str, frozenset[tuple[str, str]]] = {}  # token -> {(repository, action)}
        super().__init__(upstream)
        self.auth = None  # the helpers' Basic credentials mean nothing here; send a Bearer header instead

    def _handler_base(self) -> type["_ProxyHandler"]:
        return _TokenAuthHandler

    @property
    def realm(self) -> str:
        return self.url + self.token_path

    def challenge(self, scope: str | None, error: str | None = None) -> str:
        """The `WWW-Authenticate` value for a refused request."""
        value = f'Bearer realm="{self.realm}",service="{self.service}"'
        if scope is not None:
            value += f',scope="{scope}"'
        if error is not None:
            value += f',error="{error}"'
        return value

    def denial(self, method: str, path: str, authorization: str | None) -> tuple[str | None, str | None] | None:
        """None when the request may pass, else (scope to ask for, `error` parameter or None)."""
        repo = repo_of(path)
        action = action_for(method)
        scope = None if repo is None else f"repository:{repo}:{'pull' if action == 'pull' else 'pull,push'}"
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return scope, None
        token = token.strip()
        if self.fixed_token is not None and token == self.fixed_token:
            return None
        with self._lock:
            grants = self.issued.get(token)
        if grants is None:
            return scope, "invalid_token"
        if repo is not None and (repo, action) not in grants:
            return scope, "insufficient_scope"
        return None

    def issue(self, scopes: list[str]) -> str:
        """A new token granting the actions of `scopes` (`repository:<repo>:<a>,<b>`; other kinds grant nothing)."""
        grants = set()
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            if kind == "repository" and repo:
                grants |= {(repo, a) for a in actions.split(",") if a}
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.issued[token] = frozenset(grants)
        return token

    def log_tail(self, n: int = 2000) -> str:
        """The last 20 token requests and 60 proxied requests in full, then `n` characters of the upstream's log."""
        tokens = "\n".join(str(t) for t in self.token_requests[-20:])
        lines = "\n".join(f"{r.method} {r.path} -> {r.status}" for r in self.requests[-60:])
        up = _log_tail(self.upstream)[-n:] if n > 0 and not isinstance(self.upstream, str) else ""
        return f"--- token requests\n{tokens}\n--- proxy requests\n{lines}\n--- upstream log\n{up}"


def _basic_user(authorization: str | None) -> str | None:
    scheme, _, cred = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(cred.strip()).decode(errors="replace").partition(":")[0]
    except ValueError:
        return "(undecodable)"


class _TokenAuthHandler(_ProxyHandler):
    owner: TokenAuthProxy

    def do_GET(self) -> None:
        p = self.owner
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == p.token_path:
            self._read_body()
            self._token(parts.query)
            return
        if parts.path == "/v2" or parts.path.startswith("/v2/"):
            denied = p.denial(self.command, parts.path, self.headers.get("Authorization"))
            if denied is not None:
                self._read_body()  # keep the connection usable for the client's next request
                self._challenge(parts.path, *denied)
                return
        self._proxy()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _challenge(self, path: str, scope: str | None, error: str | None) -> None:
        p = self.owner
        repo = repo_of(path)
        detail = None if repo is None else [{"Type": "repository", "Class": "", "Name": repo,
                                             "Action": action_for(self.command)}]
        body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required",
                                       "detail": detail}]}).encode()
        p._log(self.command, path, 401, dict(self.headers.items()))  # before answering, like FaultProxy's faults
        self._send_error(_Fault("fail", lambda m, q: True, None, status=401,
                                headers={"WWW-Authenticate": p.challenge(scope, error)}, body=body), self.command)

    def _token(self, query: str) -> None:
        p = self.owner
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        service = params.get("service", [None])[0]
        scopes = [s for v in params.get("scope", []) for s in v.split(" ") if s]
        if self.command != "GET":
            status, answer = 405, {"details": f"{self.command} is not supported here (GET only)"}
        elif p.token_status is not None:
            status, answer = p.token_status, {"details": "incorrect username or password" if p.token_status == 401
                                              else "access to the requested resource is not authorized"}
        elif service != p.service:
            status, answer = 400, {"details": f"unknown service {service!r} (want {p.service!r})"}
        else:
            token = p.issue(scopes)
            status, answer = 200, {"token": token, "access_token": token, "expires_in": TOKEN_EXPIRES_IN,
                                   "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with p._lock:
            p.token_requests.append(TokenRequest(service, " ".join(scopes),
                                                 _basic_user(self.headers.get("Authorization")), status))
        p._log(self.command, p.token_path, status, dict(self.headers.items()))
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
