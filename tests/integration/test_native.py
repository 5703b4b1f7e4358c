"""Docker Model Runner native API: create (import a local GGUF), delete, and name validation."""

from __future__ import annotations

import json
import re
import shutil
from urllib.parse import quote

import pytest

from harness import pid_gone, wait_until


def create(sup, body, accept_json: bool = True):
    headers = {"Accept": "application/json"} if accept_json else {}
    return sup.post("/models/create", body, headers=headers)


def ndjson(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def copy_tiny(prereqs, dst_dir, name="imported.gguf"):
    dst = dst_dir / name
    shutil.copyfile(prereqs.tiny_gguf, dst)
    return dst


def test_create_from_local_path_then_serve(supervisors, prereqs, tmp_path):
    sup = supervisors.start(models=[])
    assert sup.get("/models").json() == []
    src = copy_tiny(prereqs, tmp_path)

    r = create(sup, {"from": str(src), "name": "ai/imported"})
    assert r.status_code == 200, r.text
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    lines = ndjson(r.text)
    assert len(lines) >= 2, lines
    progress, last = lines[:-1], lines[-1]
    assert last == {"type": "success", "message": "Model pulled successfully"}, last
    size = src.stat().st_size
    for p in progress:
        assert p["type"] == "progress", p
        assert p["total"] == size and p["mode"] == "pull", p
        assert re.match(r"^sha256:[0-9a-f]{64}$", p["layer"]["id"]) and p["layer"]["size"] == size, p
        assert 0 <= p["layer"]["current"] <= size, p
    assert progress[-1]["layer"]["current"] == size, progress[-1]

    models = sup.get("/models").json()
    assert [m["tags"] for m in models] == [["ai/imported:latest"]], models
    assert models[0]["config"]["architecture"] == "llama"
    assert sup.get("/models/ai/imported").status_code == 200
    assert [d["id"] for d in sup.get("/engines/v1/models").json()["data"]] == ["ai/imported:latest"]

    r = sup.chat(model="ai/imported", max_tokens=3)
    assert r.status_code == 200, r.text
    # No pinned sampling here (no --temp 0): a tiny random model may answer whitespace, so count the tokens.
    answer = r.json()
    assert isinstance(answer["choices"][0]["message"]["content"], str) and answer["usage"]["completion_tokens"] >= 1
    [spawn] = sup.spawns()
    assert spawn.flag("--ctx-size") == "4096", spawn.argv  # default context size for a created model


def test_create_default_name_and_text_plain(supervisors, prereqs, tmp_path):
    sup = supervisors.start(models=[])
    src = copy_tiny(prereqs, tmp_path, "Small-One.gguf")
    r = create(sup, {"from": str(src)}, accept_json=False)
    assert r.status_code == 200, r.text
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
    assert ndjson(r.text)[-1]["type"] == "success", r.text
    tags = [t for m in sup.get("/models").json() for t in m["tags"]]
    assert tags == ["ai/small-one:latest"], tags


@pytest.mark.parametrize(
    "body,status",
    [
        ({"from": "./tiny.gguf"}, 400),  # relative path
        ({"from": "../models/tiny.gguf", "name": "ai/x"}, 400),  # relative path
        ({"name": "ai/x"}, 400),  # missing `from`
        ({"from": "/nonexistent/dir/model.gguf"}, 403),  # outside [store] import_roots: existence not told
        ({"from": "127.0.0.1:1/ai/smollm2:360M-Q4_K_M"}, 502),  # a registry that does not answer
        ({"from": "hf.co/org"}, 400),  # not hf.co/ORG/REPO
    ],
)
def test_create_rejections(supervisors, body, status):
    sup = supervisors.start(models=[])
    r = create(sup, body)
    assert r.status_code == status, r.text
    assert r.text.strip(), "a rejection says why"
    assert sup.get("/models").json() == [], "a rejected create leaves the store unchanged"


def test_create_malformed_json_and_bad_name(supervisors, prereqs, tmp_path):
    sup = supervisors.start(models=[])
    r = sup.post("/models/create", data=b'{"from": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    src = copy_tiny(prereqs, tmp_path)
    for bad in ("../evil", "ai/a b", "ai/x\\y", "/ai/x"):
        r = create(sup, {"from": str(src), "name": bad})
        assert r.status_code == 400, (bad, r.text)
    assert sup.get("/models").json() == []


def test_delete_of_a_loaded_idle_model_stops_its_engine(sup):
    # As `ollama rm`: an idle runner is stopped and the model deleted, no --force needed.
    model = sup.get("/models/ai/tiny").json()
    assert sup.chat(max_tokens=2).status_code == 200
    [spawn] = sup.spawns()

    r = sup.delete("/models/ai/tiny")
    assert r.status_code == 200, r.text
    assert r.json() == [{"Untagged": "ai/tiny:latest"}, {"Deleted": model["id"]}], r.text
    assert pid_gone(spawn.pid), "the delete answers once the engine is gone"
    assert sup.ps() == []
    assert sup.get("/models/ai/tiny").status_code == 404
    assert sup.get("/models").json() == []
    assert sup.chat(max_tokens=2).status_code == 404


def test_delete_while_requests_are_in_flight_needs_force(sup):
    model = sup.get("/models/ai/tiny").json()
    stream = sup.stream("/engines/v1/chat/completions",
                        {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
                         "stream": True})
    assert stream.status == 200 and stream.next_data()
    [spawn] = sup.spawns()

    r = sup.delete("/models/ai/tiny")
    assert r.status_code == 409, r.text
    assert "requests in flight" in r.text, r.text
    assert sup.get("/models/ai/tiny").status_code == 200, "a refused delete keeps the model"
    assert not pid_gone(spawn.pid), "a refused delete keeps the runner"

    r = sup.delete("/models/ai/tiny?force=true")
    assert r.status_code == 200, r.text
    assert r.json() == [{"Untagged": "ai/tiny:latest"}, {"Deleted": model["id"]}], r.text
    wait_until(lambda: pid_gone(spawn.pid), 8.0, f"engine pid {spawn.pid} to be stopped by the forced delete")
    stream.rest()
    stream.close()
    assert sup.ps() == []
    r = sup.get("/models/ai/tiny")
    assert r.status_code == 404, r.text
    assert sup.get("/models").json() == []
    assert sup.chat(max_tokens=2).status_code == 404


def test_delete_idle_model_and_unknown(sup):
    r = sup.delete("/models/ai/nope")
    assert r.status_code == 404, r.text
    r = sup.delete("/models/ai/tiny")  # not loaded: no force needed
    assert r.status_code == 200, r.text
    assert r.json()[0] == {"Untagged": "ai/tiny:latest"}, r.text
    assert sup.get("/models/ai/tiny").status_code == 404
    assert sup.delete("/models/ai/tiny").status_code == 404


@pytest.mark.parametrize(
    "path,why",
    [
        ("/models/..%2F..%2Fetc", "'..' path component"),
        ("/models/..%2F..%2Fetc%2Fpasswd", "'..' path component"),
        ("/models/ai/ti%00ny", "forbidden character"),
        ("/models/%2e%2e/tiny", "'..' path component"),
        ("/models/ai/%2e%2e", "'..' path component"),
        ("/models/ai/tiny%5Cx", "forbidden character '\\\\'"),
        ("/models/ai/tiny%20x", "forbidden character ' '"),
    ],
)
def test_bad_names_are_rejected(sup, path, why):
    # The contract: bad names (`..`, NUL, `%2e%2e`, backslash, spaces) are 400, never a 404 lookup, and say why.
    for method in ("GET", "DELETE"):
        status, headers, body = sup.raw(method, path)
        assert status == 400, (method, path, status, body)
        assert body.startswith(b"invalid model reference") and why in body.decode(), (method, path, body)
    # nothing was deleted or escaped
    assert sup.get("/models/ai/tiny").status_code == 200


@pytest.mark.parametrize("path", ["/models/ai/ti%00ny", "/models/%2e%2e/tiny", "/models/ai/tiny%20x"])
def test_invalid_names_are_400(sup, path):
    status, _, body = sup.raw("GET", path)
    assert status == 400, (path, status, body)
    assert body.strip()


def test_openai_model_lookup_rejects_bad_names(sup):
    status, _, body = sup.raw("GET", "/engines/v1/models/ai/ti%00ny")
    assert status == 400, (status, body)
    assert json.loads(body)["error"]["message"]
    for name, why in (("../../etc", "'..' path component"), ("ai/tiny\\x", "forbidden character")):
        status, _, body = sup.raw("GET", "/engines/v1/models/" + quote(name, safe=""))
        assert status == 400, (name, status, body)
        error = json.loads(body)["error"]
        assert error["message"].startswith("invalid model reference") and why in error["message"], (name, error)


def test_engines_df_reports_store_size_and_measured_runner_memory(sup, prereqs):
    r = sup.get("/engines/df")
    assert r.status_code == 200, r.text
    df = r.json()
    assert df["store"]["models"] == 1 and df["store"]["bytes"] >= prereqs.tiny_gguf.stat().st_size, df
    # No NVML here: CPU mode, budgeting host memory, said once in the log.
    assert df["memory"]["probe"] == "system", df
    [host] = df["memory"]["devices"]
    assert 0 < host["free"] <= host["total"] and df["memory"]["runners"] == [], df
    assert sup.stderr_text().count("running in CPU mode") == 1
    assert sup.chat().status_code == 200
    [runner] = sup.get("/engines/df").json()["memory"]["runners"]
    [engine] = sup.ps()
    assert runner["pid"] == engine["pid"] and runner["model_name"] == "ai/tiny:latest", runner
    # The engine's resident memory, measured: more than the 0.5 MB weights file.
    assert runner["devices"]["0"] > prereqs.tiny_gguf.stat().st_size, runner


def manifest_of(sup, model_id: str) -> dict:
    return json.loads((sup.store / "manifests/sha256" / model_id.split(":")[1]).read_text())


def test_repackage_changes_the_context_size_and_shares_the_layers(sup):
    """DMR's `POST /models/{name}/repackage`: a new model under the target with the same layers (no copy) and the
    context size set in its config, which is what its engine then gets."""
    source = sup.get("/models/ai/tiny").json()
    r = sup.post("/models/ai/tiny/repackage", {"target": "ai/tiny-1k", "context_size": 1024})
    assert r.status_code == 201, r.text
    assert r.json() == {"message": 'Model repackaged successfully as "ai/tiny-1k:latest"', "source": "ai/tiny",
                        "target": "ai/tiny-1k:latest"}, r.text
    made = sup.get("/models/ai/tiny-1k").json()
    assert made["id"] != source["id"] and made["config"]["context_size"] == 1024
    assert {k: v for k, v in made["config"].items() if k != "context_size"} == \
        {k: v for k, v in source["config"].items() if k != "context_size"}
    assert manifest_of(sup, made["id"])["layers"] == manifest_of(sup, source["id"])["layers"]
    weights = manifest_of(sup, source["id"])["layers"][0]["digest"].split(":")[1]
    assert [p.name for p in (sup.store / "blobs/sha256").iterdir() if p.name == weights] == [weights]
    assert sup.get("/models/ai/tiny").json() == source, "the source is untouched"
    # The engine gets the model's own context size (no configured one applies to the new name).
    r = sup.chat(model="ai/tiny-1k", max_tokens=2)
    assert r.status_code == 200, r.text
    assert sup.spawns()[-1].flag("--ctx-size") == "1024", sup.spawns()[-1].argv

    for body, status in [({}, 400), ({"target": ""}, 400), ({"target": "ai/x", "context_size": 0}, 400),
                         ({"target": "ai/x", "context_size": 2**40}, 400), ({"target": "ai/BAD NAME"}, 400),
                         ({"target": "ai/x", "extra": 1}, 400)]:
        r = sup.post("/models/ai/tiny/repackage", body)
        assert r.status_code == status, (body, r.status_code, r.text)
    status, _, body = sup.raw("POST", "/models/ai/tiny/repackage", b"{not json")
    assert status == 400, body
    assert sup.post("/models/ai/nope/repackage", {"target": "ai/x"}).status_code == 404
    assert sorted(t for m in sup.get("/models").json() for t in m["tags"]) == ["ai/tiny-1k:latest", "ai/tiny:latest"]


def test_purge_unloads_and_deletes_every_model(sup, prereqs, tmp_path):
    """`DELETE /models/purge`: every runner stopped, every model and leftover download gone, the store usable."""
    assert sup.post("/models/ai/tiny/tag?repo=ai/other&tag=v1").status_code == 201
    assert sup.chat(max_tokens=2).status_code == 200
    [spawn] = sup.spawns()
    (sup.store / "blobs/sha256" / ("0" * 64 + ".incomplete")).write_bytes(b"partial")
    model_id = sup.get("/models/ai/tiny").json()["id"]

    r = sup.delete("/models/purge")
    assert r.status_code == 200, r.text
    assert r.json() == [{"Untagged": "ai/tiny:latest"}, {"Untagged": "ai/other:v1"}, {"Deleted": model_id}], r.text
    wait_until(lambda: pid_gone(spawn.pid), 8.0, "the engine to be stopped by the purge")
    assert sup.ps() == [] and sup.get("/models").json() == []
    assert list((sup.store / "blobs/sha256").iterdir()) == []
    assert list((sup.store / "manifests/sha256").iterdir()) == []
    assert sup.chat(max_tokens=2).status_code == 404
    # An empty store purges to nothing, and takes models again.
    assert sup.delete("/models/purge").json() == []
    r = create(sup, {"from": str(copy_tiny(prereqs, tmp_path)), "name": "ai/back"})
    assert ndjson(r.text)[-1]["type"] == "success", r.text
