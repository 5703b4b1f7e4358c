"""Pull, push and tag against a real OCI registry (Debian's docker-registry on loopback, tests/integration/registry.py),
with a fault-injecting proxy in front of it for cuts, corruption and error statuses. The pulled model is served by
the real llama-server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import REPO, sha256_file, wait_until
from registry import (DMR_CONFIG_V01, FaultProxy, Registry, blob_exists, get_manifest, push_dmr_gguf_model,
                      push_manifest, push_blob)


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "registry")
    yield r
    r.stop()


def lines(r) -> list[dict]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def pull(sup, ref: str, **extra):
    return sup.post("/models/create", {"from": ref, **extra}, timeout=120)


def store_files(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())


def test_push_then_pull_by_tag_and_by_digest_then_serve(supervisors, reg):
    a = supervisors.start(name="pusher")
    target = f"{reg.host}/test/tiny"
    r = a.post(f"/models/ai/tiny/tag?repo={target}&tag=v1")
    assert r.status_code == 201 and r.json()["target"] == f"{target}:v1", r.text
    r = a.post(f"/models/{target}:v1/push", {})
    out = lines(r)
    assert out[-1] == {"type": "success", "message": "Model pushed successfully"}, out[-3:]
    assert any(l.get("mode") == "push" and l["message"].startswith("Uploaded:") for l in out)
    manifest, digest = get_manifest(reg, "test/tiny", "v1")
    assert manifest["config"]["mediaType"] == DMR_CONFIG_V01
    assert [l["mediaType"] for l in manifest["layers"]] == ["application/vnd.docker.ai.gguf.v3"]
    pushed_id = a.get(f"/models/{target}:v1").json()["id"]
    assert digest == pushed_id  # the very manifest bytes travel, so the model keeps its id

    b = supervisors.start(name="puller", models=[])
    r = pull(b, f"{target}:v1")
    assert r.status_code == 200, r.text
    out = lines(r)
    assert out[-1] == {"type": "success", "message": "Model pulled successfully"}, out[-3:]
    progress = [l for l in out if l["type"] == "progress"]
    assert progress and all(l["mode"] == "pull" and l["message"].startswith("Downloaded:") for l in progress)
    last = progress[-1]
    assert last["layer"]["current"] == last["layer"]["size"] and last["total"] == last["layer"]["size"]
    assert b.get(f"/models/{target}:v1").json()["id"] == pushed_id
    # The weights are the very file, byte for byte, and the real llama-server serves them.
    blob = b.store / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]
    assert sha256_file(blob) == supervisors.prereqs.tiny_sha256
    r = b.post("/engines/v1/chat/completions", {"model": f"{target}:v1", "max_tokens": 4,
                                                 "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    # Again: nothing to download.
    assert lines(pull(b, f"{target}:v1"))[-1]["message"].startswith("Using cached model")
    # By digest: the same model.
    out = lines(pull(b, f"{target}@{digest}"))
    assert out[-1]["type"] == "success", out[-3:]
    assert b.get(f"/models/{digest}").json()["id"] == pushed_id


def test_a_packaged_chat_template_is_the_one_llama_server_applies(supervisors, reg):
    """A model whose artifact carries DMR's chat-template layer is served with that template (DMR passes
    `--chat-template-file`): a template with a long fixed preamble makes the same one-word chat cost many more
    prompt tokens than the GGUF's own template does."""
    preamble = "You are a careful assistant who answers briefly. " * 40
    template = preamble + "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    push_dmr_gguf_model(reg, "test/templated", "v1", supervisors.prereqs.tiny_gguf.read_bytes(),
                        chat_template=template)
    sup = supervisors.start()  # ai/tiny: the same GGUF, imported without a template
    assert lines(pull(sup, f"{reg.host}/test/templated:v1"))[-1]["type"] == "success"

    def prompt_tokens(model: str) -> int:
        r = sup.chat(model, max_tokens=1)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens"]

    plain, templated = prompt_tokens("ai/tiny"), prompt_tokens(f"{reg.host}/test/templated:v1")
    assert templated >= plain + 200, (plain, templated)
    [spawn] = [s for s in sup.spawns() if "--chat-template-file" in s.argv]
    blob = Path(spawn.argv[spawn.argv.index("--chat-template-file") + 1])
    assert blob.parent == sup.store / "blobs/sha256" and blob.read_text() == template
    # A runtime flag that picks a template wins over the packaged one.
    r = sup.post("/engines/llama.cpp/_configure", {"model": f"{reg.host}/test/templated:v1",
                                                   "runtime-flags": ["--chat-template", "chatml"]})
    assert r.status_code == 202, r.text
    assert prompt_tokens(f"{reg.host}/test/templated:v1") < templated
    assert sup.spawns()[-1].flag("--chat-template") == "chatml"
    assert "--chat-template-file" not in sup.spawns()[-1].argv


def test_an_interrupted_download_resumes_with_a_range_request(supervisors, reg, tmp_path):
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    push_dmr_gguf_model(reg, "test/cut", "v1", gguf, license=b"MIT")
    digest = "sha256:" + __import__("hashlib").sha256(gguf).hexdigest()
    with FaultProxy(reg) as proxy:
        proxy.cut_after(f"/blobs/{digest}", 100_000)
        sup = supervisors.start(models=[])
        out = lines(pull(sup, f"{proxy.host}/test/cut:v1"))
        assert out[-1]["type"] == "success", out[-3:]
        assert "bytes=100000-" in proxy.ranges, proxy.ranges
    blob = sup.store / "blobs/sha256" / __import__("hashlib").sha256(gguf).hexdigest()
    assert blob.read_bytes() == gguf
    assert not [f for f in store_files(sup.store) if f.endswith(".incomplete")]


def test_a_corrupted_blob_is_rejected_and_the_store_is_unchanged(supervisors, reg):
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    push_dmr_gguf_model(reg, "test/bad", "v1", gguf)
    digest = "sha256:" + __import__("hashlib").sha256(gguf).hexdigest()
    with FaultProxy(reg) as proxy:
        proxy.corrupt_blob(digest)
        sup = supervisors.start(models=[])
        before = store_files(sup.store)
        out = lines(pull(sup, f"{proxy.host}/test/bad:v1"))
        assert out[-1]["type"] == "error" and digest in out[-1]["message"], out[-3:]
        assert store_files(sup.store) == before
        assert sup.get("/models").json() == []


def test_registry_errors_are_clear_statuses(supervisors, reg):
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    push_dmr_gguf_model(reg, "test/err", "v1", gguf)
    # Not a model: an ordinary image config.
    cfg = push_blob(reg, "test/image", b"{}")
    layer = push_blob(reg, "test/image", b"layer")
    push_manifest(reg, "test/image", "v1", {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 5}]})
    with FaultProxy(reg) as proxy:
        sup = supervisors.start(models=[])
        r = pull(sup, f"{proxy.host}/test/missing:v1")
        assert r.status_code == 404 and "not found" in r.text, r.text
        r = pull(sup, f"{proxy.host}/test/image:v1")
        assert r.status_code == 422 and "unsupported config media type" in r.text, r.text
        proxy.fail("/manifests/", 401, times=1)
        r = pull(sup, f"{proxy.host}/test/err:v1")
        assert r.status_code == 401 and "not authorized" in r.text.lower(), r.text
        proxy.fail("/manifests/", 500, times=1)
        r = pull(sup, f"{proxy.host}/test/err:v1")
        assert r.status_code == 502, r.text
        r = pull(sup, "Bad Name!")
        assert r.status_code == 400, r.text
        assert sup.get("/models").json() == []


def test_credentials_come_from_the_docker_config(supervisors, tmp_path):
    with Registry(tmp_path / "locked", auth=("alice", "s3cret")) as reg:
        push_dmr_gguf_model(reg, "test/private", "v1", supervisors.prereqs.tiny_gguf.read_bytes())
        sup = supervisors.start(models=[], name="anonymous")
        r = pull(sup, f"{reg.host}/test/private:v1")
        assert r.status_code == 401, r.text
        docker = tmp_path / "docker"
        docker.mkdir()
        (docker / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": __import__("base64").b64encode(b"alice:s3cret").decode()}}}))
        sup = supervisors.start(models=[], name="logged-in", env={"DOCKER_CONFIG": str(docker)})
        assert lines(pull(sup, f"{reg.host}/test/private:v1"))[-1]["type"] == "success"


def test_concurrent_pulls_of_one_model_download_each_blob_once(supervisors, reg):
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    push_dmr_gguf_model(reg, "test/twice", "v1", gguf)
    with FaultProxy(reg) as proxy:
        proxy.throttle(400_000)  # about a second for the weights, so the pulls overlap
        sup = supervisors.start(models=[])
        results = []
        threads = [threading.Thread(target=lambda: results.append(lines(pull(sup, f"{proxy.host}/test/twice:v1"))))
                   for _ in range(3)]
        [t.start() for t in threads]
        [t.join(120) for t in threads]
        assert [r[-1]["type"] for r in results] == ["success"] * 3, [r[-1] for r in results]
        digest = "sha256:" + __import__("hashlib").sha256(gguf).hexdigest()
        gets = [p for m, p, s in proxy.requests if m == "GET" and p.endswith(f"/blobs/{digest}")]
        assert len(gets) == 1, proxy.requests


def test_ollama_pull_reencodes_the_progress(supervisors, reg):
    push_dmr_gguf_model(reg, "test/ollama", "v1", supervisors.prereqs.tiny_gguf.read_bytes())
    sup = supervisors.start(models=[])
    r = sup.post("/api/pull", {"model": f"{reg.host}/test/ollama:v1"}, timeout=120)
    out = lines(r)
    assert out[-1] == {"status": "success"}, out[-3:]
    pulling = [l for l in out if l.get("status", "").startswith("pulling ")]
    assert pulling and pulling[-1]["completed"] == pulling[-1]["total"] and pulling[-1]["digest"].startswith("sha256:")
    r = sup.post("/api/pull", {"model": f"{reg.host}/test/nope:v1", "stream": False})
    assert r.status_code == 404 and "error" in r.json(), r.text
    r = sup.post("/api/pull", {"model": f"{reg.host}/test/ollama:v1", "stream": False})
    assert r.json() == {"status": "success"}


def test_a_cancelled_pull_commits_nothing_and_the_next_one_resumes(supervisors, reg):
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    push_dmr_gguf_model(reg, "test/cancel", "v1", gguf)
    partial_name = hashlib.sha256(gguf).hexdigest() + ".incomplete"
    with FaultProxy(reg) as proxy:
        proxy.throttle(100_000)  # about 5 s for the weights
        sup = supervisors.start(models=[])
        partial = sup.store / "blobs/sha256" / partial_name
        stream = sup.stream("/models/create", {"from": f"{proxy.host}/test/cancel:v1"})
        assert json.loads(stream.resp.readline())["type"] == "progress"
        wait_until(lambda: partial.exists() and partial.stat().st_size > 0, 20, "the download to start")
        stream.close()  # the client goes away

        def stopped() -> int | None:
            before = partial.stat().st_size
            time.sleep(0.5)
            return before if partial.stat().st_size == before else None

        size = wait_until(stopped, 20, "the download to stop")
        assert 0 < size < len(gguf)
        assert sup.get("/models").json() == []
        proxy.throttle(None)
        out = lines(pull(sup, f"{proxy.host}/test/cancel:v1"))
        assert out[-1]["type"] == "success", out[-3:]
        assert f"bytes={size}-" in proxy.ranges, (size, proxy.ranges)
        assert not partial.exists()


def test_a_safetensors_model_round_trips_one_layer_per_file(supervisors, reg, tmp_path):
    src = tmp_path / "qwen"
    subprocess.run([sys.executable, str(REPO / "scripts/make-tiny-safetensors-model.py"), str(src)], check=True,
                   capture_output=True)
    a = supervisors.start(name="st-pusher", models=[{"name": f"{reg.host}/test/qwen:v1", "path": str(src)}])
    out = lines(a.post(f"/models/{reg.host}/test/qwen:v1/push", {}))
    assert out[-1]["type"] == "success", out[-3:]
    manifest, digest = get_manifest(reg, "test/qwen", "v1")
    assert manifest["config"]["mediaType"] == "application/vnd.docker.ai.model.config.v0.2+json"
    paths = sorted(l["annotations"]["org.cncf.model.filepath"] for l in manifest["layers"])
    assert "config.json" in paths and "model.safetensors" in paths
    b = supervisors.start(name="st-puller", models=[])
    assert lines(pull(b, f"{reg.host}/test/qwen:v1"))[-1]["type"] == "success"
    m = b.get(f"/models/{reg.host}/test/qwen:v1").json()
    assert m["id"] == digest and m["config"]["format"] == "safetensors"
    # The engine's bundle is rebuilt from the pulled blobs, file for file.
    bundle = b.store / "bundles/sha256" / digest.split(":")[1] / "model"
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == paths
    assert (bundle / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
