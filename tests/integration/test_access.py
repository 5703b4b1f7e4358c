"""Who may call: API keys (with the official SDKs, each sending the key its own way), CORS as a browser does it,
and the Unix socket listener (trusted: no key), all against the real binary and engine."""

from __future__ import annotations

import http.client
import json
import socket
import stat

import anthropic
import ollama
import openai
import pytest

from harness import assert_openai_error

KEY = "sk-test-0123456789"
MSG = [{"role": "user", "content": "hi"}]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def over_unix(path, method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    c = UnixHTTPConnection(str(path))
    c.request(method, url, body=json.dumps(body) if body is not None else None,
              headers={"content-type": "application/json"})
    r = c.getresponse()
    out = (r.status, r.read())
    c.close()
    return out


@pytest.fixture
def keyed(supervisors):
    return supervisors.start(server={"api_keys": [KEY]})


def test_without_a_key_every_dialect_answers_401_but_health_is_open(keyed):
    assert keyed.get("/health").status_code == 200
    err = assert_openai_error(keyed.chat(max_tokens=2), 401, "invalid_request_error", "invalid_api_key")
    assert "API key" in err["message"]
    r = keyed.get("/models")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in r.text
    r = keyed.post("/api/chat", {"model": "ai/tiny", "messages": MSG})
    assert r.status_code == 401 and "API key" in r.json()["error"], r.text
    r = keyed.post("/v1/messages", {"model": "ai/tiny", "max_tokens": 2, "messages": MSG})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
    assert keyed.spawns() == []


def test_each_sdk_sends_the_key_its_way(keyed):
    oai = openai.OpenAI(base_url=keyed.url("/engines/v1"), api_key=KEY, max_retries=0)  # Authorization: Bearer
    assert oai.chat.completions.create(model="ai/tiny", messages=MSG, max_tokens=2).choices[0].message.content
    ant = anthropic.Anthropic(base_url=keyed.base, api_key=KEY, max_retries=0)  # x-api-key
    assert ant.messages.create(model="ai/tiny", max_tokens=2, messages=MSG).content[0].text
    oll = ollama.Client(host=keyed.base, headers={"Authorization": f"Bearer {KEY}"})
    assert oll.chat(model="ai/tiny", messages=MSG, options={"num_predict": 2}).message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.url("/engines/v1"), api_key="sk-wrong", max_retries=0).models.list()
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=keyed.base, api_key="sk-wrong", max_retries=0).messages.create(
            model="ai/tiny", max_tokens=2, messages=MSG)


def test_cors_preflight_allowed_origins_and_refusals(supervisors):
    sup = supervisors.start(server={"allowed_origins": ["https://chat.example.com"], "api_keys": [KEY]})
    pre = {"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    status, headers, _ = sup.raw("OPTIONS", "/engines/v1/chat/completions", None, pre)
    assert status == 204, headers
    assert headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "authorization, content-type"

    auth = {"Authorization": f"Bearer {KEY}"}
    r = sup.get("/engines/v1/models", headers={"Origin": "https://chat.example.com", **auth})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert r.headers["vary"] == "Origin"
    # An origin nobody allowed: 403 in the caller's dialect, even with a key; preflight too.
    r = sup.get("/engines/v1/models", headers={"Origin": "https://evil.example", **auth})
    err = assert_openai_error(r, 403, "invalid_request_error")
    assert "https://evil.example" in err["message"] and "access-control-allow-origin" not in r.headers
    status, _, body = sup.raw("OPTIONS", "/api/chat", None, {**pre, "Origin": "https://evil.example"})
    assert status == 403 and "is not allowed" in json.loads(body)["error"], body
    # No Origin (curl, SDKs): not a CORS request, no CORS headers.
    r = sup.get("/engines/v1/models", headers=auth)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_the_unix_socket_serves_without_a_key_and_is_removed_at_exit(supervisors, tmp_path):
    path = tmp_path / "run" / "dmr.sock"
    sup = supervisors.start(server={"socket": str(path), "api_keys": [KEY]})
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o660
    status, body = over_unix(path, "POST", "/engines/v1/chat/completions",
                             {"model": "ai/tiny", "messages": MSG, "max_tokens": 2})
    assert status == 200 and json.loads(body)["choices"], body
    status, body = over_unix(path, "GET", "/engines/ps")
    assert status == 200 and len(json.loads(body)) == 1
    # TCP still needs the key.
    assert sup.get("/engines/ps").status_code == 401
    sup.stop()
    assert not path.exists()


def test_a_stale_socket_file_is_replaced_but_a_regular_file_is_not(supervisors, tmp_path):
    path = tmp_path / "dmr.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crash leaves
    sup = supervisors.start(server={"socket": str(path)})
    assert over_unix(path, "GET", "/health")[0] == 200
    sup.stop()

    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    cfg, _, _ = supervisors.write_config(server={"socket": str(regular)})
    rc, out, err = supervisors.run_to_exit(cfg)
    assert rc != 0 and "is not a socket" in err, err
    assert regular.read_text() == "keep me"
