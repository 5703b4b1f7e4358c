"""Registry auth with Docker Hub's bearer token flow: the real daemon pulls (and pushes) through TokenAuthProxy
(tests/integration/registry.py), a real HTTP token server in front of Debian's docker-registry on loopback.

- Anonymous: the daemon probes `/v2/`, follows the `WWW-Authenticate: Bearer realm=...` challenge to the token
  endpoint without credentials, asks for the right service and scope, and uses the token it gets for the manifest,
  the config and the layers; the pulled model is then served by the real llama-server.
- `"bearer-token"` in `POST /models/create` (and in a push): sent as is, with no token exchange, when the token
  server refuses everyone; without it (or with a wrong one) the pull fails with a clear 401.

The daemon runs with an empty `DOCKER_CONFIG`, so no credentials of the machine's user can take part."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import requests

from harness import Supervisor, SupervisorFactory, sha256_file
from registry import ProxiedRequest, Registry, TokenAuthProxy, TokenRequest, get_manifest, push_dmr_gguf_model

FIXED = "fixed-token-the-client-already-has"


@pytest.fixture
def reg(tmp_path: Path):
    r = Registry(tmp_path / "registry")
    yield r
    r.stop()


@pytest.fixture
def no_docker_login(tmp_path: Path) -> dict[str, str]:
    """The environment for a daemon that has no docker credentials at all (an empty `DOCKER_CONFIG` dir)."""
    d = tmp_path / "docker-config"
    d.mkdir()
    return {"DOCKER_CONFIG": str(d)}


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lines(r: requests.Response) -> list[dict]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def pull(sup: Supervisor, ref: str, **extra) -> requests.Response:
    return sup.post("/models/create", {"from": ref, **extra}, timeout=120)


def authorization(headers: dict[str, str]) -> str | None:
    """The Authorization header of a logged request (names keep the client's case; hyper sends lower case)."""
    return next((v for k, v in headers.items() if k.lower() == "authorization"), None)


def authorizations(proxy: TokenAuthProxy, path_part: str) -> list[tuple[ProxiedRequest, str | None]]:
    """(request, its Authorization header) for every request whose path contains `path_part`."""
    return [(r, authorization(h)) for r, h in zip(proxy.requests, proxy.request_headers) if path_part in r.path]


def test_an_anonymous_pull_follows_the_bearer_token_flow_then_serves(supervisors: SupervisorFactory, reg: Registry,
                                                                      no_docker_login: dict[str, str]):
    """The registry answers every request without a token with a Bearer challenge: the pull succeeds only because
    the daemon fetched a token from the realm (service `test-registry`, scope `repository:test/tokened:pull`,
    no credentials) and sent it on every manifest and blob request; the only 401s are the `/v2/` probes, and the
    model then serves a chat."""
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    digest = push_dmr_gguf_model(reg, "test/tokened", "v1", gguf, license=b"MIT")
    with TokenAuthProxy(reg) as proxy:
        sup = supervisors.start(name="anonymous", models=[], env=no_docker_login)
        ref = f"{proxy.host}/test/tokened:v1"
        r = pull(sup, ref)
        assert r.status_code == 200, f"{r.status_code} {r.text}\n{proxy.log_tail()}"
        out = lines(r)
        assert out[-1] == {"type": "success", "message": "Model pulled successfully"}, (out[-3:], proxy.log_tail())

        assert proxy.token_requests, proxy.log_tail()
        assert set(proxy.token_requests) == {TokenRequest("test-registry", "repository:test/tokened:pull", None, 200)}
        refused = [r for r in proxy.requests if r.status == 401]
        assert refused and all(r == ProxiedRequest("GET", "/v2/", 401) for r in refused), proxy.log_tail()
        # Everything about the model was fetched with a token the realm issued for it.
        fetched = authorizations(proxy, "/v2/test/tokened/")
        manifest, _ = get_manifest(reg, "test/tokened", "v1")
        wanted = {"/v2/test/tokened/manifests/v1",
                  *(f"/v2/test/tokened/blobs/{d['digest']}" for d in [manifest["config"], *manifest["layers"]])}
        assert wanted <= {r.path for r, _ in fetched if r.status == 200}, proxy.log_tail()
        for req, auth in fetched:
            assert auth is not None and auth.startswith("Bearer "), (req, auth)
            assert auth.removeprefix("Bearer ") in proxy.issued, (req, auth)

        assert sup.get(f"/models/{ref}").json()["id"] == digest
        blob = sup.store / "blobs/sha256" / digest_of(gguf)
        assert sha256_file(blob) == supervisors.prereqs.tiny_sha256
        r = sup.chat(ref, max_tokens=2)
        assert r.status_code == 200, r.text


def test_a_bearer_token_in_the_request_is_sent_as_is(supervisors: SupervisorFactory, reg: Registry,
                                                     no_docker_login: dict[str, str]):
    """The token server refuses everyone (403) and only a fixed token opens the registry. Without a token the
    daemon tries the flow, is refused, and the pull fails with 401 before anything is stored; a wrong
    `bearer-token` fails the same way; the right one succeeds with no token exchange at all (the token is sent
    as `Authorization: Bearer` on every request)."""
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    digest = push_dmr_gguf_model(reg, "test/private", "v1", gguf)
    with TokenAuthProxy(reg, fixed_token=FIXED, token_status=403) as proxy:
        sup = supervisors.start(name="token-holder", models=[], env=no_docker_login)
        ref = f"{proxy.host}/test/private:v1"

        r = pull(sup, ref)
        assert r.status_code == 401 and "not authorized" in r.text.lower(), f"{r.status_code} {r.text}"
        assert proxy.token_requests, proxy.log_tail()
        assert set(proxy.token_requests) == {TokenRequest("test-registry", "repository:test/private:pull", None, 403)}
        assert ProxiedRequest("GET", "/v2/test/private/manifests/v1", 401) in proxy.requests, proxy.log_tail()

        r = pull(sup, ref, **{"bearer-token": "not-the-token"})
        assert r.status_code == 401 and "not authorized" in r.text.lower(), f"{r.status_code} {r.text}"
        assert authorizations(proxy, "/v2/test/private/manifests/v1")[-1][1] == "Bearer not-the-token"
        assert sup.get("/models").json() == []

        exchanges = len(proxy.token_requests)
        r = pull(sup, ref, **{"bearer-token": FIXED})
        out = lines(r)
        assert r.status_code == 200 and out[-1]["type"] == "success", (r.status_code, out[-3:], proxy.log_tail())
        assert len(proxy.token_requests) == exchanges  # no token request: the given token is the token
        with_fixed = [req for req, auth in authorizations(proxy, "/v2/test/private/") if auth == f"Bearer {FIXED}"]
        assert {"/v2/test/private/manifests/v1", f"/v2/test/private/blobs/sha256:{digest_of(gguf)}"} <= {
            req.path for req in with_fixed if req.status == 200}, proxy.log_tail()
        assert sup.get(f"/models/{ref}").json()["id"] == digest
        assert sha256_file(sup.store / "blobs/sha256" / digest_of(gguf)) == supervisors.prereqs.tiny_sha256


def test_a_push_gets_a_pull_push_token_or_uses_the_given_one(supervisors: SupervisorFactory, reg: Registry,
                                                             no_docker_login: dict[str, str]):
    """An anonymous push asks the realm for `repository:<repo>:pull,push` and uploads with that token (the upload
    `Location` goes through the proxy too); with the token server refusing, a push with `bearer-token` still lands
    the very manifest in the registry (sent with that token, no exchange), while one with a wrong token or none
    fails and tags nothing."""
    with TokenAuthProxy(reg, fixed_token=FIXED) as proxy:
        sup = supervisors.start(name="pusher", env=no_docker_login)  # has ai/tiny
        model_id = sup.get("/models/ai/tiny").json()["id"]
        for tag in ("anon", "given", "wrong", "none"):
            r = sup.post(f"/models/ai/tiny/tag?repo={proxy.host}/test/pushed&tag={tag}")
            assert r.status_code == 201, r.text

        out = lines(sup.post(f"/models/{proxy.host}/test/pushed:anon/push", {}, timeout=120))
        assert out[-1] == {"type": "success", "message": "Model pushed successfully"}, (out[-3:], proxy.log_tail())
        assert TokenRequest("test-registry", "repository:test/pushed:pull,push", None, 200) in proxy.token_requests
        assert get_manifest(reg, "test/pushed", "anon")[1] == model_id

        proxy.token_status = 403
        exchanges = len(proxy.token_requests)
        out = lines(sup.post(f"/models/{proxy.host}/test/pushed:given/push", {"bearer-token": FIXED}, timeout=120))
        assert out[-1]["type"] == "success", (out[-3:], proxy.log_tail())
        assert len(proxy.token_requests) == exchanges
        assert get_manifest(reg, "test/pushed", "given")[1] == model_id
        put = [a for r, a in authorizations(proxy, "/v2/test/pushed/manifests/given") if r.method == "PUT"]
        assert put and set(put) == {f"Bearer {FIXED}"}, proxy.log_tail()

        # A rejected token fails the push, saying so.
        out = lines(sup.post(f"/models/{proxy.host}/test/pushed:wrong/push", {"bearer-token": "nope"}, timeout=120))
        assert out[-1]["type"] == "error", out[-3:]
        assert out[-1]["message"].startswith(f"Error: not authorized to push {proxy.host}/test/pushed:wrong"), out[-3:]
        assert "401 Unauthorized" in out[-1]["message"], out[-3:]
        out = lines(sup.post(f"/models/{proxy.host}/test/pushed:none/push", {}, timeout=120))
        assert out[-1]["type"] == "error" and "authentication failed" in out[-1]["message"], out[-3:]
        tags = requests.get(f"{reg.url}/v2/test/pushed/tags/list", timeout=10).json()["tags"]
        assert sorted(tags) == ["anon", "given"]
