"""TLS, against the real binary: the HTTPS listener (`[server] tls_cert`, `tls_key`) with its certificate reloaded on
SIGHUP, and pulls from a registry that serves TLS with a certificate of a private CA (`[registry] ca_certs`, and
`[registry] secure` for a registry on loopback). The registry is Debian's docker-registry serving HTTPS; the CA and
certificates are made by the test (tlsca.py, openssl); models are served by the real llama-server."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess

import httpx
import openai
import pytest
import requests

from harness import wait_until
from registry import Registry, push_dmr_gguf_model
from test_access import over_unix
from tlsca import TestCA, common_name, served_certificate

MSG = [{"role": "user", "content": "hi"}]


def lines(r) -> list[dict]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


@pytest.fixture
def ca(tmp_path) -> TestCA:
    return TestCA(tmp_path / "ca")


def tls_server(supervisors, ca: TestCA, name: str, serial: int, **server):
    """A supervisor whose listener serves `ca.issue(name, serial)` from files in its own directory."""
    cert, key = ca.issue(name, serial)
    cfg, store, spawns = supervisors.write_config(server={"tls_cert": "server.pem", "tls_key": "server.key", **server})
    (cfg.parent / "server.pem").write_bytes(cert.read_bytes())
    (cfg.parent / "server.key").write_bytes(key.read_bytes())
    return supervisors.start_with(cfg, store, spawns)


def test_the_listener_serves_https_and_nothing_else(supervisors, ca, tmp_path):
    sock = tmp_path / "dmr.sock"
    sup = tls_server(supervisors, ca, "dmr-one", 1001, socket=str(sock))
    base = f"https://127.0.0.1:{sup.port}"
    r = requests.get(base + "/v1/models", verify=str(ca.cert), timeout=60)
    assert r.status_code == 200 and "ai/tiny:latest" in [m["id"] for m in r.json()["data"]], r.text
    served = served_certificate(sup.port, ca.cert)
    assert common_name(served) == "dmr-one" and served["alpn"] == "http/1.1", served

    # The official SDK, verifying the test CA: models and a chat answered by the real llama-server.
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca.cert))) as http:
        client = openai.OpenAI(base_url=base + "/engines/v1", api_key="unused", http_client=http)
        assert "ai/tiny:latest" in [m.id for m in client.models.list()]
        chat = client.chat.completions.create(model="ai/tiny", messages=MSG, max_tokens=4)
        assert chat.choices[0].message.content is not None

    # A client that does not trust the CA is refused; plain HTTP on the TLS port gets no HTTP answer.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(base + "/v1/models", timeout=10)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{sup.port}/v1/models", timeout=10)
    # ... and the server serves on.
    assert requests.get(base + "/v1/models", verify=str(ca.cert), timeout=60).status_code == 200
    # The CLI trusts the test CA with --ca-cert; without it, it fails saying why.
    cli = [str(supervisors.prereqs.supervisor), "--host", base]
    p = subprocess.run(cli + ["--ca-cert", str(ca.cert), "ls"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "ai/tiny" in p.stdout, p.stdout + p.stderr
    p = subprocess.run(cli + ["ls"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "certificate" in p.stderr.lower(), p.stderr
    p = subprocess.run(cli + ["--ca-cert", str(tmp_path / "missing.pem"), "ls"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0 and "--ca-cert" in p.stderr, p.stderr
    # The Unix socket stays plain HTTP.
    status, body = over_unix(sock, "GET", "/v1/models")
    assert status == 200 and b"ai/tiny" in body, body


def test_sighup_serves_new_certificate_files_and_keeps_the_old_one_when_the_new_is_bad(supervisors, ca):
    sup = tls_server(supervisors, ca, "dmr-one", 1001)
    first = served_certificate(sup.port, ca.cert)
    assert (common_name(first), first["serialNumber"]) == ("dmr-one", "03E9"), first

    cert, key = ca.issue("dmr-two", 2002)
    (sup.dir / "server.pem").write_bytes(cert.read_bytes())
    (sup.dir / "server.key").write_bytes(key.read_bytes())
    sup.signal(signal.SIGHUP)
    second = wait_until(lambda: (c := served_certificate(sup.port, ca.cert))["serialNumber"] == "07D2" and c,
                        20, "the new certificate after SIGHUP")
    assert common_name(second) == "dmr-two"
    assert "TLS certificate reloaded" in sup.stderr_text()
    r = requests.get(f"https://127.0.0.1:{sup.port}/v1/models", verify=str(ca.cert), timeout=60)
    assert r.status_code == 200, r.text

    # A new key that is not the certificate's: the reload is refused with the key path, the old pair serves on.
    _, other_key = ca.issue("dmr-three", 3003)
    (sup.dir / "server.key").write_bytes(other_key.read_bytes())
    sup.signal(signal.SIGHUP)
    wait_until(lambda: "server.tls_key" in sup.stderr_text(), 20, "the refused reload in the log")
    assert "configuration reload failed" in sup.stderr_text()
    # The same through the API, which returns the error.
    r = requests.post(f"https://127.0.0.1:{sup.port}/config/reload", verify=str(ca.cert), timeout=60)
    assert r.status_code == 400 and "server.tls_key" in r.text and "does not belong" in r.text, r.text
    # A certificate file that is not one: refused with its key path.
    (sup.dir / "server.key").write_bytes(key.read_bytes())
    (sup.dir / "server.pem").write_text("not a certificate\n")
    r = requests.post(f"https://127.0.0.1:{sup.port}/config/reload", verify=str(ca.cert), timeout=60)
    assert r.status_code == 400 and "server.tls_cert" in r.text, r.text
    assert served_certificate(sup.port, ca.cert)["serialNumber"] == "07D2"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca.cert))) as http:
        r = http.post(f"https://127.0.0.1:{sup.port}/engines/v1/chat/completions",
                      json={"model": "ai/tiny", "messages": MSG, "max_tokens": 2}, timeout=60)
        assert r.status_code == 200, r.text


def test_bad_tls_and_ca_files_refuse_startup_with_their_key_paths(supervisors, ca, tmp_path):
    cert, key = ca.issue("dmr-one", 1001)
    _, other_key = ca.issue("dmr-other", 1002)
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    cases = [
        ({"server": {"tls_cert": str(junk), "tls_key": str(key)}}, "config error: server.tls_cert: "),
        ({"server": {"tls_cert": str(cert), "tls_key": str(other_key)}}, "config error: server.tls_key: "),
        ({"server": {"tls_cert": str(cert), "tls_key": str(tmp_path / "missing.key")}},
         "config error: server.tls_key: cannot read "),
        ({"server": {"tls_cert": str(cert)}}, "config error: server.tls_key: missing"),
        ({"extra": f'[registry]\nca_certs = ["{junk}"]'}, "config error: registry.ca_certs[0]: "),
        ({"extra": f'[registry]\nca_certs = ["{tmp_path / "nope.pem"}"]'}, "config error: registry.ca_certs[0]: cannot read "),
        ({"extra": '[registry]\nmirrors = { "docker.io" = ["mirror.lan"] }'},
         'config error: registry.mirrors."docker.io"[0]: '),
    ]
    for kw, expected in cases:
        cfg, _, _ = supervisors.write_config(**kw)
        rc, out, err = supervisors.run_to_exit(cfg)
        assert rc == 2 and expected in err, (kw, rc, err)
        assert "listening" not in out


@pytest.fixture
def tls_registry(tmp_path, ca, monkeypatch, supervisors):
    """A docker-registry serving HTTPS with a certificate of the test CA, holding `test/tiny:v1`."""
    cert, key = ca.issue("registry", 4004)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.cert))  # the seeding helpers verify it
    reg = Registry(tmp_path / "registry", tls=(cert, key, ca.cert))
    push_dmr_gguf_model(reg, "test/tiny", "v1", supervisors.prereqs.tiny_gguf.read_bytes())
    yield reg
    reg.stop()


def test_a_pull_from_a_tls_registry_needs_its_ca(supervisors, ca, tls_registry):
    ref = f"{tls_registry.host}/test/tiny:v1"
    # A registry on loopback is plain HTTP unless `secure` names it; without the CA its certificate is refused.
    untrusting = supervisors.start(models=[], extra=f'[registry]\nsecure = ["{tls_registry.host}"]')
    r = untrusting.post("/models/create", {"from": ref}, timeout=120)
    assert r.status_code == 502, r.text
    assert "UnknownIssuer" in r.text and "certificate" in r.text, r.text
    assert untrusting.get(f"/models/{ref}").status_code == 404

    trusting = supervisors.start(
        models=[], extra=f'[registry]\nsecure = ["{tls_registry.host}"]\nca_certs = ["{ca.cert}"]')
    out = lines(trusting.post("/models/create", {"from": ref}, timeout=120))
    assert out[-1] == {"type": "success", "message": "Model pulled successfully"}, out[-3:]
    r = trusting.chat(ref, max_tokens=2)
    assert r.status_code == 200, r.text
    # Without `secure` the loopback registry is spoken to in plain HTTP, which it refuses, saying so.
    plain = supervisors.start(models=[], extra=f'[registry]\nca_certs = ["{ca.cert}"]')
    r = plain.post("/models/create", {"from": ref}, timeout=120)
    assert r.status_code >= 400 and "HTTPS server" in r.text, r.text


def test_hugging_face_over_https_is_verified_with_the_ca_certs_too(supervisors, ca, tmp_path):
    from hf_repos import HfServer, make_hf_root, start
    root = make_hf_root(tmp_path / "hf", supervisors)
    cert, key = ca.issue("hf", 6006)
    with HfServer(root, tls=(cert, key)) as hf:
        untrusting = start(supervisors, hf.url, name="hf-untrusting")
        r = untrusting.post("/models/create", {"from": "hf.co/testorg/tiny-GGUF"}, timeout=120)
        assert r.status_code == 502 and "UnknownIssuer" in r.text, r.text
        trusting = start(supervisors, hf.url, extra=f'ca_certs = ["{ca.cert}"]', name="hf-trusting")
        out = lines(trusting.post("/models/create", {"from": "hf.co/testorg/tiny-GGUF"}, timeout=120))
        assert out[-1] == {"type": "success", "message": "Model pulled successfully"}, out[-3:]
