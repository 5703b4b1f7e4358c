"""Model listing in both dialects, name resolution, and the exact engine argv."""

from __future__ import annotations

import re
from pathlib import Path

from harness import assert_openai_error, sha256_file

SHA_ID = re.compile(r"^sha256:[0-9a-f]{64}$")


def test_list_models_dmr_shape(sup):
    r = sup.get("/models")
    assert r.status_code == 200, r.text
    models = r.json()
    assert isinstance(models, list) and len(models) == 1, models
    m = models[0]
    assert SHA_ID.match(m["id"]), m
    assert m["tags"] == ["ai/tiny:latest"], m
    assert isinstance(m["created"], int) and m["created"] > 1_600_000_000, m
    cfg = m["config"]
    assert cfg["format"] == "gguf", cfg
    assert cfg["architecture"] == "llama", cfg
    assert cfg["quantization"] == "F32", cfg
    assert cfg["context_size"] == 4096, cfg  # llama.context_length of the GGUF, not the runtime context
    assert isinstance(cfg["parameters"], str) and cfg["parameters"], cfg
    # The contract shows "…MiB"; a 0.46 MiB file may be rendered in KiB: accept any binary unit.
    assert re.fullmatch(r"\d+(\.\d+)? ?(B|KiB|MiB|GiB)", cfg["size"]), cfg
    assert cfg["gguf"]["general.architecture"] == "llama", cfg
    assert cfg["gguf"].get("general.name") == "tiny", cfg

    one = sup.get("/models/ai/tiny")
    assert one.status_code == 200, one.text
    assert one.json() == m
    tagged = sup.get("/models/ai/tiny:latest")
    assert tagged.status_code == 200, tagged.text
    assert tagged.json()["id"] == m["id"]


def test_list_models_openai_shape(sup):
    r = sup.get("/engines/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list", body
    assert [d["id"] for d in body["data"]] == ["ai/tiny:latest"], body
    d = body["data"][0]
    assert d["object"] == "model" and d["owned_by"] == "docker" and isinstance(d["created"], int), d

    one = sup.get("/engines/v1/models/ai/tiny")
    assert one.status_code == 200, one.text
    assert one.json() == d
    for prefix in ("/engines/llama.cpp/v1", "/v1"):
        r = sup.get(prefix + "/models")
        assert r.status_code == 200, (prefix, r.text)
        assert [x["id"] for x in r.json()["data"]] == ["ai/tiny:latest"], (prefix, r.text)


def test_unknown_model_is_404_in_each_dialect(sup):
    r = sup.get("/models/ai/nope")
    assert r.status_code == 404, r.text
    assert r.text.strip(), "DMR errors carry a text body"
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers

    r = sup.get("/engines/v1/models/ai/nope")
    assert_openai_error(r, 404, "not_found_error", "model_not_found")
    r = sup.get("/v1/models/ai/nope")
    assert_openai_error(r, 404)


def test_model_name_forms_resolve_to_the_same_model(sup):
    mid = sup.get("/models/ai/tiny").json()["id"]
    hexid = mid.split(":", 1)[1]
    for name in ("tiny", "ai/tiny", "AI/Tiny", "ai/tiny:latest", mid, hexid[:12], hexid):
        r = sup.chat(model=name, max_tokens=2)
        assert r.status_code == 200, (name, r.text)
    assert len(sup.spawns()) == 1, "all names resolve to one model, hence one runner"


def test_engine_argv_is_exact(sup, prereqs):
    r = sup.chat(max_tokens=4)
    assert r.status_code == 200, r.text
    spawns = sup.spawns()
    assert len(spawns) == 1, spawns
    argv = spawns[0].argv
    assert len(argv) == 13, argv
    assert argv[0] == "--model"
    model_path = Path(argv[1])
    assert model_path.is_absolute(), argv
    blobs = (sup.store / "blobs" / "sha256").resolve()
    assert model_path.resolve().parent == blobs, f"{model_path} is not a blob under {blobs}"
    digest = sha256_file(model_path)
    assert model_path.name.startswith(digest), f"blob name {model_path.name} is not its digest {digest}"
    assert digest == prereqs.tiny_sha256, "the blob is a byte-for-byte copy of the configured GGUF"
    assert argv[2:4] == ["--host", "127.0.0.1"], argv
    assert argv[4] == "--port" and 0 < int(argv[5]) < 65536, argv
    assert argv[6:] == ["--ctx-size", "512", "--alias", "ai/tiny:latest", "--metrics", "--temp", "0"], argv

    ps = sup.ps()
    assert len(ps) == 1, ps
    p = ps[0]
    assert p["backend_name"] == "llama.cpp" and p["model_name"] == "ai/tiny:latest", p
    assert p["mode"] == "completion" and p["pid"] == spawns[0].pid and p["port"] == int(argv[5]), p
    assert p["keep_alive"] == "5m0s", p


def test_root_version_and_status(sup, prereqs):
    r = sup.get("/")
    assert r.status_code == 200 and "dmr-supervisor is running" in r.text, r.text
    r = sup.get("/version")
    assert r.status_code == 200 and r.json() == {"version": "0.1.0"}, r.text
    r = sup.get("/engines/status")
    assert r.status_code == 200, r.text
    assert r.json()["llama.cpp"].startswith("Running"), r.text
