"""Self-tests of registry.py against the real docker-registry: the helpers, the DMR artifact shape, the registry
behaviour the Rust client must cope with, every FaultProxy fault, and TokenAuthProxy's token flow. No supervisor
binary is needed.

Needs `docker-registry` (scripts/registry-env.sh) and bcrypt (scripts/python-env.sh)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import requests

from registry import (
    CHAT_TEMPLATE_LAYER,
    DMR_CONFIG_V01,
    GGUF_LAYER,
    LICENSE_LAYER,
    MANIFEST_ACCEPT,
    OCI_MANIFEST,
    FaultProxy,
    Registry,
    RegistryHTTPError,
    TokenAuthProxy,
    TokenRequest,
    blob_exists,
    build_dmr_gguf_artifact,
    delete_manifest,
    get_blob,
    get_manifest,
    get_manifest_raw,
    list_tags,
    push_blob,
    push_dmr_gguf_model,
    sha256_digest,
)

GGUF = b"GGUF" + b"\x03\x00\x00\x00" + os.urandom(200_000)


@pytest.fixture(scope="module")
def registry():
    reg = Registry()
    yield reg
    reg.stop()


@pytest.fixture
def proxy(registry: Registry):
    p = FaultProxy(registry)
    yield p
    p.stop()


def raw_get(host: str, path: str, headers: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
    """One GET over a raw socket, read until the server closes: (status line, headers, body as received)."""
    h, port = host.split(":")
    with socket.create_connection((h, int(port)), timeout=10) as s:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return lines[0], hdrs, body


def read_until_cut(proxy: FaultProxy, path: str) -> tuple[str, dict[str, str], bytes]:
    """A GET that the proxy cuts: what arrived before the close (raw socket: urllib3 drops the last partial read),
    after checking that `requests` sees the truncation as an error."""
    out = raw_get(proxy.host, path, {})
    assert int(out[1]["content-length"]) > len(out[2])
    return out


# ---------------------------------------------------------------------------------------------------------
# Helpers and the DMR artifact shape


def test_push_dmr_gguf_model_reads_back_by_tag_and_digest(registry: Registry):
    digest = push_dmr_gguf_model(registry, "ai/tiny", "latest", GGUF, license="MIT License\n",
                                 chat_template="{{ messages }}", created="2025-01-02T03:04:05Z",
                                 config={"architecture": "llama", "context_size": 512})
    manifest, by_tag = get_manifest(registry, "ai/tiny", "latest")
    assert by_tag == digest
    again, by_digest = get_manifest(registry, "ai/tiny", digest)
    assert (again, by_digest) == (manifest, digest)
    assert list_tags(registry, "ai/tiny") == ["latest"]

    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == OCI_MANIFEST
    assert "artifactType" not in manifest
    assert manifest["config"]["mediaType"] == DMR_CONFIG_V01
    assert [layer["mediaType"] for layer in manifest["layers"]] == [GGUF_LAYER, LICENSE_LAYER, CHAT_TEMPLATE_LAYER]
    assert manifest["layers"][0]["annotations"]["org.cncf.model.filepath"] == "model.gguf"

    config = json.loads(get_blob(registry, "ai/tiny", manifest["config"]["digest"]))
    assert list(config) == ["config", "descriptor", "rootfs"]
    assert config["config"]["format"] == "gguf"
    assert config["config"]["architecture"] == "llama" and config["config"]["context_size"] == 512
    assert config["descriptor"] == {"created": "2025-01-02T03:04:05Z"}
    assert config["rootfs"] == {"type": "rootfs", "diff_ids": [layer["digest"] for layer in manifest["layers"]]}

    blobs = [get_blob(registry, "ai/tiny", layer["digest"]) for layer in manifest["layers"]]
    assert blobs == [GGUF, b"MIT License\n", b"{{ messages }}"]
    assert [layer["size"] for layer in manifest["layers"]] == [len(b) for b in blobs]


def test_artifacts_are_deterministic_and_minimal(registry: Registry):
    a = build_dmr_gguf_artifact(GGUF)
    b = build_dmr_gguf_artifact(GGUF)
    assert a.digest == b.digest and a.manifest_bytes == b.manifest_bytes
    assert [layer["mediaType"] for layer in a.manifest["layers"]] == [GGUF_LAYER]
    assert a.config["descriptor"]["created"] == "1970-01-01T00:00:00Z"
    assert build_dmr_gguf_artifact(GGUF, created="2025-01-01T00:00:00Z").digest != a.digest
    assert push_dmr_gguf_model(registry, "ai/minimal", "v1", GGUF) == a.digest


def test_chunked_upload_delete_and_blob_exists(registry: Registry):
    data = os.urandom(70_000)
    digest = push_blob(registry, "test/chunks", data, chunk_size=16_384)
    assert get_blob(registry, "test/chunks", digest) == data
    assert blob_exists(registry, "test/chunks", digest)
    assert not blob_exists(registry, "test/chunks", sha256_digest(b"nope"))

    md = push_dmr_gguf_model(registry, "test/chunks", "t1", GGUF)
    by_tag = requests.delete(f"{registry.url}/v2/test/chunks/manifests/t1", timeout=10)
    assert by_tag.status_code == 400  # deletes work by digest only
    delete_manifest(registry, "test/chunks", md)
    assert list_tags(registry, "test/chunks") == []
    assert requests.get(f"{registry.url}/v2/test/chunks/tags/list", timeout=10).json()["tags"] is None
    with pytest.raises(RegistryHTTPError) as e:
        get_manifest(registry, "test/chunks", "t1")
    assert e.value.status == 404 and "MANIFEST_UNKNOWN" in e.value.body


# ---------------------------------------------------------------------------------------------------------
# docker-registry 2.8.2 behaviour the Rust client meets


def test_registry_needs_oci_accept_for_oci_manifests(registry: Registry):
    md = push_dmr_gguf_model(registry, "quirk/accept", "latest", GGUF)
    url = f"{registry.url}/v2/quirk/accept/manifests/latest"
    for accept in (None, "*/*", "application/json", "application/vnd.docker.distribution.manifest.v2+json"):
        r = requests.get(url, headers={"Accept": accept} if accept else {}, timeout=10)
        assert r.status_code == 404, accept
        assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        assert "accept header does not support OCI manifests" in r.json()["errors"][0]["message"]
    r = requests.get(url, headers={"Accept": MANIFEST_ACCEPT}, timeout=10)
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == md
    assert r.headers["Content-Type"] == OCI_MANIFEST
    h = requests.head(url, headers={"Accept": OCI_MANIFEST}, timeout=10)
    assert h.status_code == 200 and h.headers["Docker-Content-Digest"] == md
    assert int(h.headers["Content-Length"]) == len(r.content)

    # A manifest PUT must carry the manifest's own media type as Content-Type.
    raw = get_manifest_raw(registry, "quirk/accept", "latest").raw
    bad = requests.put(f"{registry.url}/v2/quirk/accept/manifests/x", data=raw,
                       headers={"Content-Type": "application/json"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    # Unknown repository or tag: MANIFEST_UNKNOWN (tags/list of an unknown repository: NAME_UNKNOWN).
    r = requests.get(f"{registry.url}/v2/no/such/manifests/latest", headers={"Accept": MANIFEST_ACCEPT}, timeout=10)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    r = requests.get(f"{registry.url}/v2/no/such/tags/list", timeout=10)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_registry_range_requests(registry: Registry):
    data = os.urandom(10_000)
    digest = push_blob(registry, "quirk/range", data)
    url = f"{registry.url}/v2/quirk/range/blobs/{digest}"
    full = requests.get(url, timeout=10)
    assert full.status_code == 200 and full.headers["Accept-Ranges"] == "bytes"
    assert full.headers["Docker-Content-Digest"] == digest and full.headers["Etag"] == f'"{digest}"'
    r = requests.get(url, headers={"Range": "bytes=4000-"}, timeout=10)
    assert r.status_code == 206 and r.content == data[4000:]
    assert r.headers["Content-Range"] == "bytes 4000-9999/10000"
    assert r.headers["Content-Length"] == "6000"
    # A range at (or past) the end: 416 + `Content-Range: bytes */SIZE`, but the registry has already set
    # Content-Length to the blob size, then writes a 33-byte text body and closes: the framing is broken.
    status, hdrs, body = raw_get(registry.host, f"/v2/quirk/range/blobs/{digest}", {"Range": "bytes=10000-"})
    assert status.split()[1] == "416"
    assert hdrs["content-range"] == "bytes */10000" and hdrs["content-length"] == "10000"
    assert body == b"invalid range: failed to overlap\n"


def test_registry_upload_location_is_absolute_and_monolithic_post_is_ignored(registry: Registry):
    r = requests.post(f"{registry.url}/v2/quirk/upload/blobs/uploads/", timeout=10)
    assert r.status_code == 202
    assert r.headers["Location"].startswith(f"{registry.url}/v2/quirk/upload/blobs/uploads/")
    assert "_state=" in r.headers["Location"] and r.headers["Range"] == "0-0"
    # POST ?digest= with a body does NOT complete the upload in 2.8.2: it opens a session like an empty POST.
    r = requests.post(f"{registry.url}/v2/quirk/upload/blobs/uploads/?digest={sha256_digest(b'x')}", data=b"x",
                      headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert r.status_code == 202
    assert not blob_exists(registry, "quirk/upload", sha256_digest(b"x"))
    # The PUT's digest must match the bytes.
    r = requests.post(f"{registry.url}/v2/quirk/upload/blobs/uploads/", timeout=10)
    r = requests.put(r.headers["Location"] + "&digest=" + sha256_digest(b"x"), data=b"y", timeout=10)
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "DIGEST_INVALID"
    # A manifest may reference only blobs already in the repository.
    art = build_dmr_gguf_artifact(b"GGUF never uploaded")
    r = requests.put(f"{registry.url}/v2/quirk/upload/manifests/x", data=art.manifest_bytes,
                     headers={"Content-Type": OCI_MANIFEST}, timeout=10)
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    # Cross-repository mount of a blob the registry already has: 201 at once.
    d = push_blob(registry, "quirk/upload", b"shared")
    r = requests.post(f"{registry.url}/v2/quirk/mounted/blobs/uploads/?mount={d}&from=quirk/upload", timeout=10)
    assert r.status_code == 201 and r.headers["Docker-Content-Digest"] == d


# ---------------------------------------------------------------------------------------------------------
# FaultProxy


def test_proxy_forwards_push_and_pull_and_rewrites_location(registry: Registry, proxy: FaultProxy):
    r = requests.post(f"{proxy.url}/v2/via/proxy/blobs/uploads/", timeout=10)
    assert r.status_code == 202 and r.headers["Location"].startswith(proxy.url + "/v2/via/proxy/blobs/uploads/")
    requests.delete(r.headers["Location"], timeout=10)

    digest = push_dmr_gguf_model(proxy, "via/proxy", "latest", GGUF, license="L")
    assert get_manifest(registry, "via/proxy", "latest")[1] == digest  # really in the registry
    manifest, d2 = get_manifest(proxy, "via/proxy", "latest")
    assert d2 == digest and get_blob(proxy, "via/proxy", manifest["layers"][0]["digest"]) == GGUF

    # A chunked (Transfer-Encoding) request body is forwarded too.
    data = os.urandom(50_000)
    r = requests.post(f"{proxy.url}/v2/via/proxy/blobs/uploads/", timeout=10)
    put = requests.put(r.headers["Location"] + "&digest=" + sha256_digest(data),
                       data=iter([data[:20_000], data[20_000:]]), timeout=10)
    assert put.status_code == 201 and put.headers["Location"].startswith(proxy.url)
    assert get_blob(registry, "via/proxy", sha256_digest(data)) == data

    methods = {(m, s) for m, _, s in proxy.requests}
    assert {("POST", 202), ("PUT", 201), ("GET", 200)} <= methods
    assert all(s < 400 for _, _, s in proxy.requests)


def test_cut_blob_then_range_resume(registry: Registry, proxy: FaultProxy):
    digest = push_blob(registry, "fault/cut", GGUF)
    path = f"/v2/fault/cut/blobs/{digest}"
    url = proxy.url + path
    proxy.cut_blob_after(50_000)
    status, hdrs, first = read_until_cut(proxy, path)
    assert status.split()[1] == "200" and hdrs["content-length"] == str(len(GGUF))
    assert first == GGUF[:50_000]
    proxy.cut_blob_after(10_000)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # requests' name for the early close
        requests.get(url, timeout=10)

    rest = requests.get(url, headers={"Range": f"bytes={len(first)}-"}, timeout=10)
    assert rest.status_code == 206 and rest.headers["Content-Range"] == f"bytes 50000-{len(GGUF) - 1}/{len(GGUF)}"
    assert first + rest.content == GGUF
    assert proxy.ranges == ["bytes=50000-"]
    cut_then_resumed = [(m, s) for m, p, s in proxy.requests if p == path]
    assert cut_then_resumed == [("GET", 200), ("GET", 200), ("GET", 206)]
    assert get_blob(proxy, "fault/cut", digest) == GGUF  # times=1: the next whole GET is intact

    proxy.cut_blob_after(0, times=2)  # headers only, twice
    for _ in range(2):
        assert read_until_cut(proxy, path)[2] == b""
    assert get_blob(proxy, "fault/cut", digest) == GGUF


def test_corrupt_blob_flips_bytes_in_place(registry: Registry, proxy: FaultProxy):
    digest = push_blob(registry, "fault/corrupt", GGUF)
    other = push_blob(registry, "fault/corrupt", b"untouched")
    proxy.corrupt_blob(digest)
    r = requests.get(f"{proxy.url}/v2/fault/corrupt/blobs/{digest}", timeout=10)
    assert r.status_code == 200 and len(r.content) == len(GGUF)
    diff = [i for i in range(len(GGUF)) if r.content[i] != GGUF[i]]
    assert diff == [len(GGUF) // 2, len(GGUF) - 1]
    assert r.headers["Docker-Content-Digest"] == digest  # headers untouched: only a hash check notices
    with pytest.raises(AssertionError, match="came back as"):
        get_blob(proxy, "fault/corrupt", digest)
    # A resumed (ranged) read sees the same corruption at the same blob offsets.
    start = len(GGUF) // 2 - 10
    part = requests.get(f"{proxy.url}/v2/fault/corrupt/blobs/{digest}", headers={"Range": f"bytes={start}-"},
                        timeout=10).content
    assert part[10] == GGUF[start + 10] ^ 0xFF and part[:10] == GGUF[start:start + 10]
    assert get_blob(proxy, "fault/corrupt", other) == b"untouched"
    proxy.clear()
    assert get_blob(proxy, "fault/corrupt", digest) == GGUF


def test_fail_statuses(registry: Registry, proxy: FaultProxy):
    md = push_dmr_gguf_model(registry, "fault/fail", "latest", GGUF)
    murl = f"{proxy.url}/v2/fault/fail/manifests/latest"
    hdrs = {"Accept": MANIFEST_ACCEPT}

    proxy.fail("/manifests/", 401, times=1)
    r = requests.get(murl, headers=hdrs, timeout=10)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert requests.get(murl, headers=hdrs, timeout=10).status_code == 200  # times=1 used up

    proxy.fail("/manifests/", 404, times=1)
    r = requests.get(murl, headers=hdrs, timeout=10)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"

    proxy.fail("/blobs/", 500, method="GET")  # forever, GET only
    for _ in range(3):
        r = requests.get(f"{proxy.url}/v2/fault/fail/blobs/{md}", timeout=10)
        assert r.status_code == 500 and r.json()["errors"][0]["code"] == "UNKNOWN"
    assert requests.head(f"{proxy.url}/v2/fault/fail/blobs/{md}", timeout=10).status_code == 404  # not a blob
    proxy.fail("/v2/", 404, code="NAME_UNKNOWN", times=1)
    r = requests.get(f"{proxy.url}/v2/x/y/tags/list", timeout=10)
    assert r.json()["errors"][0]["code"] == "NAME_UNKNOWN"

    deadline = time.monotonic() + 5  # the proxy logs a request just after answering it
    while len(proxy.requests) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [s for _, _, s in proxy.requests] == [401, 200, 404, 500, 500, 500, 404, 404]
    assert all(p.startswith("/v2/") for _, p, _ in proxy.requests)


# ---------------------------------------------------------------------------------------------------------
# htpasswd auth


def test_htpasswd_basic_auth(tmp_path):
    with Registry(tmp_path / "reg", auth=("alice", "s3cret")) as reg:
        r = requests.get(reg.url + "/v2/", timeout=10)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Basic realm="dmr-test-registry"'
        assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
        assert requests.get(reg.url + "/v2/", auth=("alice", "s3cret"), timeout=10).status_code == 200
        assert requests.get(reg.url + "/v2/", auth=("alice", "wrong"), timeout=10).status_code == 401

        digest = push_dmr_gguf_model(reg, "private/model", "latest", GGUF)  # uses reg.auth
        assert get_manifest(reg, "private/model", "latest")[1] == digest
        with pytest.raises(RegistryHTTPError) as e:
            get_manifest(reg.url, "private/model", "latest")  # a bare URL: no credentials
        assert e.value.status == 401

        with FaultProxy(reg) as p:  # credentials pass through the proxy
            assert p.auth == ("alice", "s3cret")
            assert get_manifest(p, "private/model", "latest")[1] == digest
            assert requests.get(p.url + "/v2/", timeout=10).status_code == 401
            assert "Authorization" in p.request_headers[0]


# ---------------------------------------------------------------------------------------------------------
# FaultProxy in front of something else: the Hugging Face stand-in


def test_proxy_in_front_of_hf_server(tmp_path: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hf"))
    from hf_server import HfServer

    repo = tmp_path / "acme" / "m"
    repo.mkdir(parents=True)
    (repo / "m.gguf").write_bytes(GGUF)
    with HfServer(tmp_path, redirect_lfs=True) as hf, FaultProxy(hf.url) as p:
        p.cut_after("/_cdn/", 1234)
        r = requests.get(f"{p.url}/acme/m/resolve/main/m.gguf", allow_redirects=False, timeout=10)
        assert r.status_code == 302 and r.headers["Location"].startswith(p.url + "/_cdn/")  # rewritten
        cdn_path = r.headers["Location"][len(p.url):]
        _, hdrs, first = read_until_cut(p, cdn_path)
        assert first == GGUF[:1234] and hdrs["content-length"] == str(len(GGUF))
        rest = requests.get(p.url + cdn_path, headers={"Range": "bytes=1234-"}, timeout=10)
        assert rest.status_code == 206 and first + rest.content == GGUF
        p.fail("/api/models/", 401, body=b'{"error":"Invalid username or password."}', times=1)
        r = requests.get(f"{p.url}/api/models/acme/m", timeout=10)
        assert r.status_code == 401 and r.json() == {"error": "Invalid username or password."}
        assert requests.get(f"{p.url}/api/models/acme/m", timeout=10).json()["id"] == "acme/m"


def test_throttle(registry: Registry, proxy: FaultProxy):
    data = os.urandom(60_000)
    digest = push_blob(registry, "fault/slow", data)
    proxy.throttle(200_000)
    t0 = time.monotonic()
    assert get_blob(proxy, "fault/slow", digest) == data
    assert time.monotonic() - t0 >= 0.25
    proxy.clear()
    t0 = time.monotonic()
    assert get_blob(proxy, "fault/slow", digest) == data
    assert time.monotonic() - t0 < 0.25


# ---------------------------------------------------------------------------------------------------------
# TokenAuthProxy: Docker Hub's bearer token flow


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def get_token(proxy: TokenAuthProxy, *scopes: str, service: str = "test-registry",
              auth: tuple[str, str] | None = None) -> requests.Response:
    return requests.get(proxy.realm, params=[("service", service)] + [("scope", s) for s in scopes], auth=auth,
                        timeout=10)


def test_token_proxy_challenges_every_request_without_a_valid_token(registry: Registry):
    """Without a token (or with one it never issued) nothing reaches the registry: 401, a registry-style error body
    and a Bearer challenge naming the realm, the service and the scope the request needs (none for `/v2/`)."""
    push_dmr_gguf_model(registry, "tok/challenge", "v1", GGUF)
    with TokenAuthProxy(registry) as p:
        realm = f'Bearer realm="{p.url}/token",service="test-registry"'
        r = requests.get(p.url + "/v2/", timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == realm
        assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"

        murl = f"{p.url}/v2/tok/challenge/manifests/v1"
        for method in ("GET", "HEAD"):
            r = requests.request(method, murl, headers={"Accept": MANIFEST_ACCEPT}, timeout=10)
            assert r.status_code == 401, method
            assert r.headers["WWW-Authenticate"] == realm + ',scope="repository:tok/challenge:pull"'
        err = requests.get(murl, timeout=10).json()["errors"][0]
        assert err["code"] == "UNAUTHORIZED"
        assert err["detail"] == [{"Type": "repository", "Class": "", "Name": "tok/challenge", "Action": "pull"}]

        # Writes need push; the request body is consumed, so the same connection goes on working.
        with requests.Session() as s:
            r = s.put(f"{p.url}/v2/tok/challenge/manifests/v2", data=b"x" * 10_000,
                      headers={"Content-Type": OCI_MANIFEST}, timeout=10)
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"] == realm + ',scope="repository:tok/challenge:pull,push"'
            assert s.post(f"{p.url}/v2/tok/challenge/blobs/uploads/", timeout=10).status_code == 401

        r = requests.get(murl, headers=bearer("made-up"), timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].endswith(',error="invalid_token"')
        r = requests.get(murl, headers={"Authorization": "Basic " + "dTpw"}, timeout=10)  # not a bearer token
        assert r.status_code == 401 and "error=" not in r.headers["WWW-Authenticate"]

        assert p.token_requests == []
        assert [(m, path, s) for m, path, s in p.requests] == [
            ("GET", "/v2/", 401), ("GET", "/v2/tok/challenge/manifests/v1", 401),
            ("HEAD", "/v2/tok/challenge/manifests/v1", 401), ("GET", "/v2/tok/challenge/manifests/v1", 401),
            ("PUT", "/v2/tok/challenge/manifests/v2", 401), ("POST", "/v2/tok/challenge/blobs/uploads/", 401),
            ("GET", "/v2/tok/challenge/manifests/v1", 401), ("GET", "/v2/tok/challenge/manifests/v1", 401)]


def test_token_endpoint_issues_scoped_tokens_and_logs_each_request(registry: Registry):
    """The realm issues Docker-style token JSON for the asked service; each token grants exactly the actions and
    repositories of its scope; every call is logged with its service, scope, Basic user and answer."""
    digest = push_dmr_gguf_model(registry, "tok/scoped", "v1", GGUF)
    with TokenAuthProxy(registry) as p:
        r = get_token(p, "repository:tok/scoped:pull")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token"] == body["access_token"] and body["expires_in"] == 300 and "." not in body["token"]
        pull_token = body["token"]

        murl = f"{p.url}/v2/tok/scoped/manifests/v1"
        r = requests.get(murl, headers={"Accept": MANIFEST_ACCEPT, **bearer(pull_token)}, timeout=10)
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == digest
        assert requests.get(p.url + "/v2/", headers=bearer(pull_token), timeout=10).json() == {}
        # A pull token neither writes nor reads another repository.
        r = requests.post(f"{p.url}/v2/tok/scoped/blobs/uploads/", headers=bearer(pull_token), timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].endswith(
            ',scope="repository:tok/scoped:pull,push",error="insufficient_scope"')
        r = requests.get(f"{p.url}/v2/tok/other/manifests/v1", headers=bearer(pull_token), timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].endswith(',error="insufficient_scope"')

        assert get_token(p, "repository:tok/a:pull", "repository:tok/b:pull,push", auth=("bob", "pw")).ok
        assert get_token(p, "repository:tok/scoped:pull", service="elsewhere").status_code == 400
        assert p.token_requests == [
            TokenRequest("test-registry", "repository:tok/scoped:pull", None, 200),
            TokenRequest("test-registry", "repository:tok/a:pull repository:tok/b:pull,push", "bob", 200),
            TokenRequest("elsewhere", "repository:tok/scoped:pull", None, 400)]

        p.token_status = 403  # the token server now refuses everyone; tokens already issued stay valid
        r = get_token(p, "repository:tok/scoped:pull")
        assert r.status_code == 403 and "details" in r.json()
        assert p.token_requests[-1] == TokenRequest("test-registry", "repository:tok/scoped:pull", None, 403)
        assert requests.get(murl, headers={"Accept": MANIFEST_ACCEPT, **bearer(pull_token)}, timeout=10).ok
        assert ("GET", "/token", 403) in p.requests


def test_token_proxy_forwards_pulls_and_pushes_with_a_valid_token(registry: Registry):
    """With an issued token (or the fixed one it was given) requests reach the real registry: a pull reads the very
    bytes, and a push works end to end because the upload `Location` is rewritten to the proxy, so the follow-up
    PUT is challenged and authorized like any other request. The fixed token needs no token request."""
    digest = push_dmr_gguf_model(registry, "tok/fwd", "v1", GGUF, license="L")
    with TokenAuthProxy(registry, fixed_token="fixed-secret") as p:
        token = get_token(p, "repository:tok/fwd:pull").json()["token"]
        manifest, d = get_manifest(registry, "tok/fwd", "v1")
        r = requests.get(f"{p.url}/v2/tok/fwd/manifests/v1", headers={"Accept": MANIFEST_ACCEPT, **bearer(token)},
                         timeout=10)
        assert r.status_code == 200 and sha256_digest(r.content) == d == digest
        blob = requests.get(f"{p.url}/v2/tok/fwd/blobs/{manifest['layers'][0]['digest']}", headers=bearer(token),
                            timeout=10)
        assert blob.status_code == 200 and blob.content == GGUF

        push = get_token(p, "repository:tok/pushed:pull,push").json()["token"]
        for tok in (push, "fixed-secret"):
            data = os.urandom(30_000)
            r = requests.post(f"{p.url}/v2/tok/pushed/blobs/uploads/", headers=bearer(tok), timeout=10)
            assert r.status_code == 202 and r.headers["Location"].startswith(p.url + "/v2/tok/pushed/blobs/uploads/")
            unauthorized = requests.put(r.headers["Location"] + "&digest=" + sha256_digest(data), data=data,
                                        timeout=10)
            assert unauthorized.status_code == 401  # the rewritten Location is guarded too
            put = requests.put(r.headers["Location"] + "&digest=" + sha256_digest(data), data=data,
                               headers=bearer(tok), timeout=10)
            assert put.status_code == 201 and put.headers["Location"].startswith(p.url)
            assert get_blob(registry, "tok/pushed", sha256_digest(data)) == data  # really in the registry
        assert [t.scope for t in p.token_requests] == ["repository:tok/fwd:pull", "repository:tok/pushed:pull,push"]
        assert p.auth is None
