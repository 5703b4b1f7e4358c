"""The store outlives the daemon: a model created through the API is still there after a restart."""

from __future__ import annotations

import shutil


def test_restart_keeps_created_models(supervisors, prereqs, tmp_path):
    store = tmp_path / "shared-store"
    src = tmp_path / "kept.gguf"
    shutil.copyfile(prereqs.tiny_gguf, src)

    first = supervisors.start(models=[], store=store, name="first")
    r = first.post("/models/create", {"from": str(src), "name": "ai/kept"}, headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    assert r.text.strip().splitlines()[-1].find('"success"') >= 0, r.text
    before = first.get("/models/ai/kept").json()
    assert first.stop() == 0
    src.unlink()  # the store holds its own copy

    second = supervisors.start(models=[], store=store, name="second")
    models = second.get("/models").json()
    assert [m["tags"] for m in models] == [["ai/kept:latest"]], models
    assert models[0]["id"] == before["id"], (models[0], before)
    r = second.chat(model="ai/kept", max_tokens=3)
    assert r.status_code == 200, r.text
    # No pinned sampling here (no --temp 0): a tiny random model may answer whitespace, so count the tokens.
    answer = r.json()
    assert isinstance(answer["choices"][0]["message"]["content"], str) and answer["usage"]["completion_tokens"] >= 1
    assert second.spawns()[0].argv[1].startswith(str(store)), second.spawns()[0].argv


def test_configured_model_is_imported_once(supervisors, tmp_path):
    store = tmp_path / "store"
    first = supervisors.start(store=store, name="a")
    id1 = first.get("/models/ai/tiny").json()["id"]
    assert first.stop() == 0
    second = supervisors.start(store=store, name="b")
    models = second.get("/models").json()
    assert len(models) == 1 and models[0]["id"] == id1, models
