"""Attacks from a hostile registry (issue 19): the real docker-registry (registry.py) serves what a malicious pusher
put there, through a FaultProxy that logs every request. Each pull must be refused with a clear status and message,
and the store's blob directory must hold exactly the files it held before (no orphan blob, no partial download).
- a manifest that declares a wrong size for a blob the store already has (no "Using cached model");
- a config blob, and a manifest, larger than `[registry] max_manifest_bytes` (read with the cap, never whole);
- a layer whose file path annotation leaves the model directory, refused before any layer is downloaded;
- blobs a refused pull left before a restart are collected at start-up (`.incomplete` downloads are kept)."""

from __future__ import annotations

import hashlib
import json

from registry import (FaultProxy, build_dmr_gguf_artifact, canonical_json, is_blob_get, push_blob, push_manifest,
                      sha256_digest)
from test_registry import lines, pull, reg  # noqa: F401  (reg is a fixture)

CAP = '[registry]\nmax_manifest_bytes = "64KiB"'


def blob_dir(sup) -> set[str]:
    return {p.name for p in (sup.store / "blobs/sha256").iterdir()}


def push_raw(target, repo: str, tag: str, blobs: list[bytes], manifest: dict) -> bytes:
    """Pushes `blobs`, then `manifest` as given (sizes and annotations as the attacker wrote them)."""
    for data in blobs:
        push_blob(target, repo, data)
    body = canonical_json(manifest)
    push_manifest(target, repo, tag, body)
    return body


def blob_gets(proxy: FaultProxy) -> list[str]:
    return [r.path for r in proxy.requests if is_blob_get(r.method, r.path)]


def test_a_manifest_lying_about_a_cached_blobs_size_is_refused(supervisors, reg):
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    art = build_dmr_gguf_artifact(gguf)
    manifest = json.loads(art.manifest_bytes)
    manifest["layers"][0]["size"] = len(gguf) + 4096
    push_raw(reg, "evil/lie", "v1", list(art.blobs.values()), manifest)
    sup = supervisors.start()  # ai/tiny: the very weights blob is already in the store
    digest = manifest["layers"][0]["digest"]
    assert digest.split(":")[1] in blob_dir(sup)
    before, models = blob_dir(sup), sup.get("/models").json()
    r = pull(sup, f"{reg.host}/evil/lie:v1")
    assert r.status_code == 422, r.text
    assert (f"the manifest declares layer {digest} as {len(gguf) + 4096} bytes, but that blob holds {len(gguf)} "
            "bytes") in r.text, r.text
    assert "cached" not in r.text.lower()
    assert blob_dir(sup) == before
    assert sup.get("/models").json() == models

    # Not cached: the registry's answer is not the declared size either; refused before a byte is kept.
    other = supervisors.start(models=[])
    r = pull(other, f"{reg.host}/evil/lie:v1")
    out = lines(r)
    assert out[-1]["type"] == "error" and f"manifest declares {len(gguf) + 4096} bytes" in out[-1]["message"], out[-3:]
    assert blob_dir(other) == set()
    assert other.get("/models").json() == []


def test_a_config_over_the_cap_is_refused_without_reading_it_whole(supervisors, reg):
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    art = build_dmr_gguf_artifact(gguf, config={"padding": "x" * (100 << 10)})
    assert len(art.config_bytes) > 100 << 10
    push_raw(reg, "evil/bigconfig", "v1", list(art.blobs.values()), art.manifest)
    # The same config, its size understated in the manifest: the cap must hold on the body itself.
    understated = json.loads(art.manifest_bytes)
    understated["config"]["size"] = 1000
    push_raw(reg, "evil/bigconfig", "v2", [], understated)
    with FaultProxy(reg) as proxy:
        sup = supervisors.start(models=[], extra=CAP)
        before = blob_dir(sup)
        ref = f"{proxy.host}/evil/bigconfig"
        r = pull(sup, f"{ref}:v1")
        assert r.status_code == 422, r.text
        assert f"the config blob of {ref}:v1 is more than 65536 bytes: larger than [registry] max_manifest_bytes" \
               in r.text, r.text
        r = pull(sup, f"{ref}:v2")
        assert r.status_code == 422 and "larger than [registry] max_manifest_bytes" in r.text, r.text
        gguf_digest = sha256_digest(gguf)
        assert not [p for p in blob_gets(proxy) if gguf_digest in p], proxy.log_tail()
        assert blob_dir(sup) == before
        assert sup.get("/models").json() == []
        # Under the default cap (4 MiB) the same model pulls: only the cap refused it.
        ok = supervisors.start(models=[])
        assert lines(pull(ok, f"{ref}:v1"))[-1]["type"] == "success"


def test_a_manifest_over_the_cap_is_refused(supervisors, reg):
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    art = build_dmr_gguf_artifact(gguf)
    manifest = json.loads(art.manifest_bytes)
    manifest["annotations"] = {"org.example.padding": "p" * (100 << 10)}
    body = push_raw(reg, "evil/bigmanifest", "v1", list(art.blobs.values()), manifest)
    assert len(body) > 100 << 10
    with FaultProxy(reg) as proxy:
        sup = supervisors.start(models=[], extra=CAP)
        before = blob_dir(sup)
        ref = f"{proxy.host}/evil/bigmanifest:v1"
        r = pull(sup, ref)
        assert r.status_code == 422, r.text
        assert f"the manifest of {ref} is more than 65536 bytes: larger than [registry] max_manifest_bytes" \
               in r.text, r.text
        assert "/v2/evil/bigmanifest/manifests/v1" in proxy.paths("GET"), proxy.log_tail()
        assert blob_gets(proxy) == [], proxy.log_tail()
        assert blob_dir(sup) == before
        assert sup.get("/models").json() == []


def test_an_unsafe_layer_path_is_refused_before_any_download(supervisors, reg):
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    art = build_dmr_gguf_artifact(gguf, license=b"MIT", gguf_name="../../etc/x")
    push_raw(reg, "evil/path", "v1", list(art.blobs.values()), art.manifest)
    with FaultProxy(reg) as proxy:
        sup = supervisors.start(models=[])
        before = blob_dir(sup)
        r = pull(sup, f"{proxy.host}/evil/path:v1")
        assert r.status_code == 422, r.text
        assert "has no safe file path" in r.text and "../../etc/x" in r.text, r.text
        assert blob_gets(proxy) == [], proxy.log_tail()
        assert blob_dir(sup) == before
        assert sup.get("/models").json() == []
    assert not list(sup.store.parent.rglob("etc/x"))


def test_orphan_blobs_are_collected_at_start_up_and_partial_downloads_kept(supervisors):
    cfg_store = supervisors.tmp / "orphans" / "store"
    blobs = cfg_store / "blobs/sha256"
    blobs.mkdir(parents=True)
    orphan = b"left by a refused pull"
    orphan_hex = hashlib.sha256(orphan).hexdigest()
    (blobs / orphan_hex).write_bytes(orphan)
    partial = f"{'ab' * 32}.incomplete"
    (blobs / partial).write_bytes(b"resume me")
    sup = supervisors.start(name="orphans", store=cfg_store)
    names = blob_dir(sup)
    assert orphan_hex not in names and partial in names, names
    model_id = sup.get("/models/ai/tiny").json()["id"]
    manifest = json.loads((sup.store / "manifests/sha256" / model_id.split(":")[1]).read_bytes())
    named = {manifest["config"]["digest"].split(":")[1], *(l["digest"].split(":")[1] for l in manifest["layers"])}
    assert names == named | {partial}, names
    assert f"removed blobs no model names blobs=1 bytes={len(orphan)}" in sup.stderr_text()


def test_a_pull_refused_after_some_layers_arrived_leaves_no_orphan_blob(supervisors, reg):
    """The weights download in full, then the license layer fails its digest: the weights blob, which no model
    names, is collected as the refusal is reported."""
    gguf = supervisors.prereqs.tiny_gguf.read_bytes()
    art = build_dmr_gguf_artifact(gguf, license=b"MIT License, tampered on the way")
    push_raw(reg, "evil/late", "v1", list(art.blobs.values()), art.manifest)
    license_digest = art.layer_digests[1]
    with FaultProxy(reg) as proxy:
        proxy.corrupt_blob(license_digest)
        sup = supervisors.start(models=[])
        before = blob_dir(sup)
        out = lines(pull(sup, f"{proxy.host}/evil/late:v1"))
        assert out[-1]["type"] == "error" and license_digest in out[-1]["message"], out[-3:]
        assert any(p.endswith(art.layer_digests[0]) for p in blob_gets(proxy)), proxy.log_tail()
        assert blob_dir(sup) == before
        assert sup.get("/models").json() == []
        assert "removed blobs no model names after=\"a refused pull\" blobs=1" in sup.stderr_text()
