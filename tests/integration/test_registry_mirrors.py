"""Registry mirrors (`[registry] mirrors`), against the real binary and real docker-registry processes: a pull tries
each mirror of the reference's registry in order (same repository and tag), moves on when one is down or lacks the
model, and falls back to the registry itself; pushes always go to the registry. One mirror serves HTTPS with a
certificate of a test CA (`[registry] ca_certs`). Pulled models are served by the real llama-server."""

from __future__ import annotations

import json
import re

import pytest

from registry import FaultProxy, Registry, RegistryHTTPError, free_port, get_manifest, push_dmr_gguf_model
from tlsca import TestCA


def lines(r) -> list[dict]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def pull(sup, ref: str):
    return sup.post("/models/create", {"from": ref}, timeout=120)


def manifest_gets(reg: Registry, repo: str) -> int:
    """Manifest GETs of `repo` in the registry's access log."""
    return len(re.findall(rf'"GET /v2/{re.escape(repo)}/manifests/[^ ]* HTTP', reg.log_tail(1 << 20)))


def mirrors_extra(ca: TestCA | None, mirrors: dict[str, list[str]]) -> str:
    table = ", ".join(f'"{k}" = [{", ".join(json.dumps(u) for u in v)}]' for k, v in mirrors.items())
    ca_line = f'ca_certs = ["{ca.cert}"]\n' if ca else ""
    return f"[registry]\n{ca_line}mirrors = {{ {table} }}\n"


@pytest.fixture
def ca(tmp_path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
def registries(tmp_path):
    started: list[Registry] = []

    def start(name: str, **kw) -> Registry:
        r = Registry(tmp_path / name, **kw)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


@pytest.mark.parametrize("origin_state", ["down", "without the model"])
def test_a_mirror_serves_what_its_origin_cannot(supervisors, registries, ca, monkeypatch, origin_state):
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    cert, key = ca.issue("mirror", 5005)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.cert))  # the seeding helpers verify the TLS mirror
    full = registries("full-mirror", tls=(cert, key, ca.cert))
    push_dmr_gguf_model(full, "test/tiny", "v1", gguf)
    empty = registries("empty-mirror")
    origin = None if origin_state == "down" else registries("origin")
    origin_host = f"127.0.0.1:{free_port()}" if origin is None else origin.host
    dead = f"http://127.0.0.1:{free_port()}"
    sup = supervisors.start(models=[], extra=mirrors_extra(ca, {
        origin_host: [dead, f"http://{empty.host}", f"https://127.0.0.1:{full.port}"]}))

    ref = f"{origin_host}/test/tiny:v1"
    out = lines(pull(sup, ref))
    assert out[-1] == {"type": "success", "message": "Model pulled successfully"}, out[-3:]
    log = sup.stderr_text()
    served = [l for l in log.splitlines() if "pulling from mirror" in l]
    assert len(served) == 1 and f"https://127.0.0.1:{full.port}" in served[0], served
    skipped = [l for l in log.splitlines() if "mirror did not serve the model" in l]
    assert len(skipped) == 2 and dead in skipped[0] and f"http://{empty.host}" in skipped[1], skipped
    # In order: the empty mirror was asked (after the dead one), then the full one; the origin never.
    assert manifest_gets(empty, "test/tiny") >= 1 and manifest_gets(full, "test/tiny") >= 1
    if origin is not None:
        assert manifest_gets(origin, "test/tiny") == 0
    # The model is stored under the name asked for, and the real llama-server serves it.
    assert sup.get(f"/models/{ref}").status_code == 200
    r = sup.chat(ref, max_tokens=2)
    assert r.status_code == 200, r.text


def test_mirrors_without_the_model_fall_through_to_the_origin_and_pushes_skip_them(supervisors, registries):
    origin, empty = registries("origin"), registries("empty-mirror")
    push_dmr_gguf_model(origin, "test/tiny", "v1", supervisors.prereqs.tiny_gguf.read_bytes())
    dead = f"http://127.0.0.1:{free_port()}"
    sup = supervisors.start(extra=mirrors_extra(None, {origin.host: [f"http://{empty.host}", dead]}))
    ref = f"{origin.host}/test/tiny:v1"
    out = lines(pull(sup, ref))
    assert out[-1]["type"] == "success", out[-3:]
    log = sup.stderr_text()
    assert "pulling from mirror" not in log
    assert len([l for l in log.splitlines() if "mirror did not serve the model" in l]) == 2, log[-3000:]
    assert manifest_gets(empty, "test/tiny") >= 1 and manifest_gets(origin, "test/tiny") >= 1

    # A push goes to the registry the name says, never to its mirrors.
    target = f"{origin.host}/test/pushed"
    assert sup.post(f"/models/ai/tiny/tag?repo={target}&tag=v1").status_code == 201
    out = lines(sup.post(f"/models/{target}:v1/push", {}))
    assert out[-1] == {"type": "success", "message": "Model pushed successfully"}, out[-3:]
    get_manifest(origin, "test/pushed", "v1")
    with pytest.raises(RegistryHTTPError) as missing:
        get_manifest(empty, "test/pushed", "v1")
    assert missing.value.status == 404


def test_docker_hub_references_use_the_docker_io_mirrors_from_a_reload_on(supervisors, registries):
    """`ai/NAME` is Docker Hub's: with a mirror for docker.io it is pulled from the mirror (no Internet here). The
    mirror is added by a reload, which applies registry settings at once."""
    mirror = registries("hub-mirror")
    push_dmr_gguf_model(mirror, "ai/mirrored", "v1", supervisors.prereqs.tiny_gguf.read_bytes())
    sup = supervisors.start(models=[])
    r = pull(sup, "ai/mirrored:v1")  # Docker Hub itself: unreachable here, or without such a model
    assert r.status_code in (401, 404, 502), r.text
    text = sup.config_path.read_text()
    sup.config_path.write_text(text + mirrors_extra(None, {"docker.io": [f"http://{mirror.host}"]}))
    r = sup.post("/config/reload")
    assert r.status_code == 200, r.text
    out = lines(pull(sup, "ai/mirrored:v1"))
    assert out[-1]["type"] == "success", out[-3:]
    assert f"http://{mirror.host}" in next(l for l in sup.stderr_text().splitlines() if "pulling from mirror" in l)
    r = sup.chat("ai/mirrored:v1", max_tokens=2)
    assert r.status_code == 200, r.text
    # A model no mirror has falls through to Docker Hub: the pull fails as it did without mirrors.
    r = pull(sup, "ai/not-mirrored:v1")
    assert r.status_code in (401, 404, 502), r.text
    assert "mirror did not serve the model" in sup.stderr_text()


def test_a_mirror_that_fails_while_the_layers_download_hands_over_to_the_origin(supervisors, registries):
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    origin = registries("origin")
    mirror = registries("mirror")
    push_dmr_gguf_model(origin, "test/tiny", "v1", gguf)
    push_dmr_gguf_model(mirror, "test/tiny", "v1", gguf)
    manifest, _ = get_manifest(mirror, "test/tiny", "v1")
    layer = manifest["layers"][0]["digest"]
    # The mirror answers its manifest and config, then fails every request for the weights.
    proxy = FaultProxy(mirror).fail(f"/blobs/{layer}", 500)
    sup = supervisors.start(models=[], extra=mirrors_extra(None, {origin.host: [proxy.url]}))
    out = lines(pull(sup, f"{origin.host}/test/tiny:v1"))
    assert out[-1] == {"type": "success", "message": "Model pulled successfully"}, out[-3:]
    log = sup.stderr_text()
    assert "pulling from mirror" in log and "the mirror failed midway; pulling from the origin" in log, log[-3000:]
    assert any(r.status == 500 and layer in r.path for r in proxy.requests), proxy.requests
    assert manifest_gets(origin, "test/tiny") >= 1
    blob = sup.store / "blobs/sha256" / layer.split(":")[1]
    assert blob.read_bytes() == gguf
    r = sup.chat(f"{origin.host}/test/tiny:v1")
    assert r.status_code == 200, r.text
    proxy.stop()
