"""Attacks through DMR's model archive (issue 19): `POST /models/load` of a tar built by an attacker, and
`GET /models/{name}/export` of a model whose manifest disagrees with its blobs (tar headers written from the
manifest's sizes would let a blob's bytes be read as forged tar entries). Each refusal leaves the store's files as
they were; blobs a loaded manifest does not name are never kept; an export holds exactly the manifest's blobs and
`manifest.json`."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

from test_archive import export, lines, store_files

CAP = '[registry]\nmax_manifest_bytes = "64KiB"'


def members(tar_bytes: bytes) -> list[tuple[str, bytes]]:
    """The regular files of a tar, in order."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def tar_of(entries: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def edit_manifest(entries: list[tuple[str, bytes]], edit) -> list[tuple[str, bytes]]:
    out = []
    for name, data in entries:
        if name == "manifest.json":
            m = json.loads(data)
            edit(m)
            data = json.dumps(m).encode()
        out.append((name, data))
    return out


def manifest_first(entries: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return sorted(entries, key=lambda e: e[0] != "manifest.json")


def test_an_archive_whose_manifest_lies_about_a_layer_size_is_refused(supervisors):
    src = supervisors.start()
    good = members(export(src))
    weights = json.loads(dict(good)["manifest.json"])["layers"][0]
    real = weights["size"]

    def lie(m):
        m["layers"][0]["size"] = real + 4096

    dst = supervisors.start(models=[supervisors.other_tiny_model()])
    before, models = store_files(dst), dst.get("/models").json()
    for entries in [edit_manifest(good, lie), manifest_first(edit_manifest(good, lie))]:
        r = dst.post("/models/load?tag=evil/lie", data=tar_of(entries), timeout=120)
        out = lines(r)
        assert out[-1]["type"] == "error", out[-3:]
        assert (f"manifest.json declares blob {weights['digest']} as {real + 4096} bytes, but the blob holds {real} "
                "bytes") in out[-1]["message"], out[-1]
        assert store_files(dst) == before
        assert dst.get("/models").json() == models


def test_an_archive_manifest_over_the_cap_is_refused(supervisors):
    good = members(export(supervisors.start()))

    def pad(m):
        m["annotations"] = {"org.example.padding": "p" * (100 << 10)}

    dst = supervisors.start(models=[], extra=CAP)
    before = store_files(dst)
    out = lines(dst.post("/models/load", data=tar_of(edit_manifest(good, pad)), timeout=120))
    assert out[-1]["type"] == "error", out[-3:]
    assert "manifest.json is" in out[-1]["message"] and "(at most 65536, [registry] max_manifest_bytes)" \
           in out[-1]["message"], out[-1]
    assert store_files(dst) == before
    assert dst.get("/models").json() == []


def test_blobs_and_entries_the_manifest_does_not_name_are_not_kept(supervisors):
    src = supervisors.start()
    model_id = src.get("/models/ai/tiny").json()["id"]
    good = members(export(src))
    junk = b"a blob no manifest names"
    junk_hex = hashlib.sha256(junk).hexdigest()
    hostile = [(f"blobs/sha256/{junk_hex}", junk), ("../../tmp/evil-archive-entry", b"x"),
               ("blobs/sha256/../../escape", b"y")] + good
    for i, entries in enumerate([hostile, manifest_first(hostile)]):
        dst = supervisors.start(models=[], name=f"dst{i}")
        out = lines(dst.post("/models/load?tag=loaded/tiny", data=tar_of(entries), timeout=120))
        assert out[-1]["type"] == "success" and out[-1]["id"] == model_id, out[-3:]
        blobs = {p.name for p in (dst.store / "blobs/sha256").iterdir()}
        manifest = json.loads(dict(good)["manifest.json"])
        named = {d["digest"].split(":")[1] for d in [manifest["config"], *manifest["layers"]]}
        assert blobs == named, blobs
        assert not list(dst.store.parent.parent.rglob("evil-archive-entry"))
        assert not list(dst.store.parent.parent.rglob("escape"))


def test_an_export_is_exactly_the_manifests_blobs_and_a_lying_model_is_not_exported(supervisors):
    a = supervisors.start(name="liar")
    tar_bytes = export(a)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = [m.name for m in tar.getmembers()]
        manifest = json.loads(tar.extractfile("manifest.json").read())
        for m in tar.getmembers():
            if m.isfile() and m.name.startswith("blobs/sha256/"):
                assert hashlib.sha256(tar.extractfile(m).read()).hexdigest() == m.name.rsplit("/", 1)[1]
    named = [f"blobs/sha256/{d['digest'].split(':')[1]}" for d in [*manifest["layers"], manifest["config"]]]
    assert sorted(names) == sorted(["blobs", "blobs/sha256", *named, "manifest.json"]), names
    assert not [n for n in names if ".." in n or n.startswith("/")]

    # A model whose manifest says its weights are larger than they are (a store written before this check):
    # exporting it would write the tar header from the manifest. It is refused before a byte is sent.
    store = a.store
    a.stop()
    lying = dict(manifest, layers=[dict(manifest["layers"][0], size=manifest["layers"][0]["size"] + 1536),
                                   *manifest["layers"][1:]])
    body = json.dumps(lying).encode()
    lying_hex = hashlib.sha256(body).hexdigest()
    (store / "manifests/sha256" / lying_hex).write_bytes(body)
    index = json.loads((store / "models.json").read_text())
    files = next(m["files"] for m in index["models"])
    index["models"].append({"id": f"sha256:{lying_hex}", "tags": ["evil/lie:latest"], "files": files, "created": 0})
    (store / "models.json").write_text(json.dumps(index))
    b = supervisors.start(name="exporter", store=store, models=[])
    r = b.get("/models/evil/lie/export")
    size = manifest["layers"][0]["size"]
    assert r.status_code == 422, (r.status_code, r.headers, r.content[:300])
    assert r.headers["content-type"] != "application/x-tar"
    assert (f"blob {manifest['layers'][0]['digest']} is declared as {size + 1536} bytes but holds {size} bytes"
            in r.text), r.text
    assert export(b) == tar_bytes, "the honest model still exports, byte for byte"
