"""DMR's model archive: `GET /models/{name}/export` writes a model as a tar (`blobs/sha256/<hex>` for each layer
and the config, then `manifest.json`), `POST /models/load` reads one into another daemon's store, which then
serves it through the real llama-server; the CLI's `export` and `load` do the same. A bad archive changes
nothing."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile

from harness import sha256_file


def lines(r) -> list[dict]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def store_files(sup) -> dict[str, int]:
    return {str(p.relative_to(sup.store)): p.stat().st_size for p in sup.store.rglob("*") if p.is_file()}


def export(sup, name: str = "ai/tiny") -> bytes:
    r = sup.get(f"/models/{name}/export", timeout=120)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"] == "application/x-tar"
    assert r.headers["content-disposition"] == f'attachment; filename="{name.replace("/", "_")}_latest.tar"'
    return r.content


def test_an_exported_model_loads_into_another_daemon_and_serves(supervisors):
    src = supervisors.start()
    model = src.get("/models/ai/tiny").json()
    tar_bytes = export(src)

    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names[:2] == ["blobs", "blobs/sha256"] and names[-1] == "manifest.json", names
        manifest_bytes = tar.extractfile("manifest.json").read()
        assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == model["id"]
        manifest = json.loads(manifest_bytes)
        wanted = {manifest["config"]["digest"]} | {layer["digest"] for layer in manifest["layers"]}
        blobs = {}
        for m in members:
            if m.isfile() and m.name.startswith("blobs/sha256/"):
                blobs["sha256:" + m.name.rsplit("/", 1)[1]] = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
        assert set(blobs) == wanted, (blobs, wanted)
        assert all(d == "sha256:" + h for d, h in blobs.items())
    weights = next(layer for layer in manifest["layers"] if layer["mediaType"] == "application/vnd.docker.ai.gguf.v3")
    assert weights["digest"] == "sha256:" + supervisors.prereqs.tiny_sha256
    assert export(src) == tar_bytes, "an export is byte-for-byte repeatable"

    dst = supervisors.start(models=[])
    assert dst.get("/models").json() == []
    r = dst.post("/models/load?tag=shared/tiny:v1", data=tar_bytes, timeout=120)
    assert r.status_code == 200, r.text
    out = lines(r)
    assert out[-1] == {"type": "success", "message": "Model loaded successfully", "id": model["id"]}, out[-3:]
    progress = [line for line in out if line["type"] == "progress"]
    assert progress and progress[-1]["message"].startswith("Loaded: ")
    assert {p["layer"]["id"] for p in progress} == wanted
    loaded = dst.get("/models/shared/tiny:v1").json()
    assert loaded["id"] == model["id"] and loaded["tags"] == ["shared/tiny:v1"]
    assert loaded["config"] == model["config"]
    blob = dst.store / "blobs/sha256" / weights["digest"].split(":")[1]
    assert sha256_file(blob) == supervisors.prereqs.tiny_sha256

    r = dst.post("/engines/v1/chat/completions", {"model": "shared/tiny:v1", "max_tokens": 4,
                                                   "messages": [{"role": "user", "content": "hi"}]}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
    argv = dst.wait_spawns(1)[0].argv
    assert argv[argv.index("--model") + 1] == str(blob), argv

    # Loaded again without a tag: nothing new is written, and the success line names the same model.
    before = store_files(dst)
    again = lines(dst.post("/models/load", data=tar_bytes, timeout=120))
    assert again[-1]["type"] == "success" and again[-1]["id"] == model["id"], again[-3:]
    assert store_files(dst) == before


def test_an_untagged_load_is_listed_by_id(supervisors):
    tar_bytes = export(supervisors.start())
    dst = supervisors.start(models=[])
    out = lines(dst.post("/models/load", data=tar_bytes, timeout=120))
    assert out[-1]["type"] == "success", out[-3:]
    listed = dst.get("/models").json()
    assert [m["tags"] for m in listed] == [[]] and listed[0]["id"] == out[-1]["id"]
    assert dst.get(f"/models/{out[-1]['id']}").json()["id"] == out[-1]["id"]


def test_bad_archives_and_requests_are_refused_and_change_nothing(supervisors):
    tar_bytes = export(supervisors.start())
    dst = supervisors.start(models=[supervisors.other_tiny_model()])
    before = store_files(dst)
    models_before = dst.get("/models").json()

    # Refused before streaming: not a tar, an empty body, a bad tag, an unknown model to export.
    for path, body, why in [
        ("/models/load", b'{"from": "ai/tiny"}', "not a model archive"),
        ("/models/load", b"", "not a model archive"),
        ("/models/load?tag=Bad%20Name", tar_bytes, "invalid tag"),
        ("/models/load?tag=ai/x@sha256:" + "a" * 64, tar_bytes, "invalid tag"),
    ]:
        # All on one keep-alive session: the refused body is read to its end, so the connection stays usable.
        r = dst.post(path, data=body)
        assert r.status_code == 400 and why in r.text, (path, r.status_code, r.text)
    r = dst.get("/models/ai/nope/export")
    assert r.status_code == 404 and "not found" in r.text, r.text

    # A flipped byte in the weights: the blob does not match its digest.
    flipped = bytearray(tar_bytes)
    at = flipped.index(b"GGUF") + 200
    flipped[at] ^= 0x01
    out = lines(dst.post("/models/load?tag=x/flipped", data=bytes(flipped), timeout=120))
    assert out[-1]["type"] == "error" and "expected sha256:" in out[-1]["message"], out[-1]

    # Cut short before its manifest: the blobs that came are removed again.
    out = lines(dst.post("/models/load?tag=x/cut", data=tar_bytes[: len(tar_bytes) - 3072], timeout=120))
    assert out[-1]["type"] == "error" and "model archive" in out[-1]["message"], out[-1]

    # A manifest whose layers are neither in the archive nor in the store.
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        manifest = tar.extractfile("manifest.json").read()
    lone = io.BytesIO()
    with tarfile.open(fileobj=lone, mode="w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    out = lines(dst.post("/models/load?tag=x/lone", data=lone.getvalue(), timeout=120))
    assert out[-1]["type"] == "error" and "neither in the archive nor in the store" in out[-1]["message"], out[-1]

    assert store_files(dst) == before
    assert dst.get("/models").json() == models_before


def test_the_cli_exports_to_a_file_and_loads_it(supervisors, tmp_path):
    src = supervisors.start()
    dst = supervisors.start(models=[])
    binary = str(supervisors.prereqs.supervisor)

    def cli(sup, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "--host", sup.base, *args], capture_output=True, text=True, timeout=120)

    archive = tmp_path / "out" / "tiny.tar"
    archive.parent.mkdir()
    p = cli(src, "export", "ai/tiny", "-o", str(archive))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"Exported ai/tiny to {archive} (")
    assert archive.read_bytes() == export(src)
    p = cli(src, "export", "ai/nope", "-o", str(tmp_path / "out" / "nope.tar"))
    assert p.returncode == 1 and "not found" in p.stderr, p.stderr
    assert sorted(x.name for x in archive.parent.iterdir()) == ["tiny.tar"], "a failed export leaves no file"

    p = cli(dst, "load", str(archive), "--tag", "copied/tiny")
    assert p.returncode == 0, p.stderr
    model_id = src.get("/models/ai/tiny").json()["id"]
    assert p.stdout.strip() == f"Model loaded successfully: {model_id}"
    assert dst.get("/models/copied/tiny").json()["id"] == model_id
    p = cli(dst, "load", str(tmp_path / "missing.tar"))
    assert p.returncode == 1 and "missing.tar" in p.stderr, p.stderr
    p = cli(dst, "load", str(archive), "--tag", "Bad Name")
    assert p.returncode == 1 and "invalid tag" in p.stderr, p.stderr
