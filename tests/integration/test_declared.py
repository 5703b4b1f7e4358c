"""Models declared in the configuration (issue 18, item 1): `[[models]] from` (pulled in the background from a real
docker-registry, retried with backoff while the registry fails), `preload` (loaded once pulled; `/readyz` and
`/health` answer 503 until then), `pinned` (never evicted, never stopped for idleness) and `aliases` (answered and
listed by every dialect), and a reload that adds and removes them. The real binary and the real llama-server."""

from __future__ import annotations

import signal
import time

import pytest

from harness import render_toml, wait_until
from registry import FaultProxy, Registry, push_dmr_gguf_model
from test_service import NotifySocket


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "registry")
    yield r
    r.stop()


@pytest.fixture
def notify(tmp_path):
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.sock.close()


def ready(sup):
    return sup.get("/readyz")


def loaded(sup) -> list[str]:
    return sorted(r["model_name"] for r in sup.ps())


def test_a_model_by_reference_is_pulled_in_the_background_preloaded_and_answers_to_its_aliases(
        supervisors, reg, notify):
    tiny = supervisors.prereqs.tiny_gguf.read_bytes()
    push_dmr_gguf_model(reg, "test/declared", "v1", tiny)
    # The registry fails at first: the box must come up, serve its other models, and say why it is not ready.
    proxy = FaultProxy(reg).fail("/v2/", 503)
    ref = f"{proxy.host}/test/declared:v1"
    sup = supervisors.start(
        env={"NOTIFY_SOCKET": str(notify.path)},
        models=[supervisors.tiny_model(),
                {"from": ref, "preload": True, "aliases": ["small", "declared-tiny:fast"], "context_size": 512}])
    assert sup.get("/livez").status_code == 200
    # (a 503 Response is falsy: keep its JSON)
    body = wait_until(lambda: (r := ready(sup)).status_code == 503 and "failed" in r.text and r.json(), 10,
                      "a not-ready answer naming the failed pull")
    assert body["status"] == "loading", body
    [waiting] = body["waiting_for"]
    assert waiting["model"] == ref and "503" in waiting["state"] and "retrying in" in waiting["state"], waiting
    assert sup.get("/health").status_code == 503
    # The other model serves meanwhile.
    assert sup.chat("ai/tiny").status_code == 200
    # The log says why, and systemd's status line says it too.
    wait_until(lambda: "cannot obtain model" in sup.stderr_text(), 5, "the pull failure in the log")
    wait_until(lambda: notify.count("STATUS") and any(ref in m.get("STATUS", "") and "failed" in m["STATUS"]
                                                      for m in notify.messages), 12, f"a STATUS= naming {ref}")

    # The registry recovers: the retry (with backoff) pulls it, then it is loaded before anyone asks.
    proxy.clear()
    spawns_before = len(sup.spawns())
    wait_until(lambda: ready(sup).status_code == 200, 40, "ready once the model is pulled and loaded")
    assert ready(sup).json() == {"status": "ready"}
    assert ref in loaded(sup), sup.ps()
    assert len(sup.spawns()) == spawns_before + 1
    assert "model preloaded" in sup.stderr_text()

    # Every dialect answers to the aliases, on the runner already loaded, and lists them.
    for name in ["small", "ai/small:latest", "declared-tiny:fast"]:
        r = sup.chat(name)
        assert r.status_code == 200, (name, r.text)
    r = sup.post("/v1/messages", {"model": "small", "max_tokens": 4,
                                  "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    r = sup.post("/api/chat", {"model": "small", "stream": False,
                               "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 4}})
    assert r.status_code == 200, r.text
    assert len(sup.spawns()) == spawns_before + 1, "an alias must reach the loaded runner, not start another"
    openai_ids = {m["id"] for m in sup.get("/engines/v1/models").json()["data"]}
    assert {"ai/small:latest", "ai/declared-tiny:fast", ref} <= openai_ids, openai_ids
    assert sup.get("/engines/v1/models/small").json()["id"] == "ai/small:latest"
    ollama_names = {m["name"] for m in sup.get("/api/tags").json()["models"]}
    assert {"ai/small:latest", "ai/declared-tiny:fast"} <= ollama_names, ollama_names
    [native] = [m for m in sup.get("/models").json() if ref in m["tags"]]
    assert {"ai/small:latest", "ai/declared-tiny:fast"} <= set(native["tags"]), native
    # A restart finds it in the store: no pull (the registry is down again), loaded and ready.
    proxy.fail("/v2/", 503)
    sup.stop()
    again = supervisors.start_with(sup.config_path, sup.store, sup.wrapper_log)
    wait_until(lambda: ready(again).status_code == 200, 30, "ready after a restart without the registry")
    assert ref in loaded(again)
    again.stop()  # both share one spawn log: stop it before the teardown checks the first one's engines
    proxy.stop()


def test_a_pinned_model_is_never_evicted_nor_stopped_for_idleness(supervisors):
    pinned = supervisors.tiny_model(pinned=True, preload=True)
    sup = supervisors.start(models=[pinned, supervisors.other_tiny_model()],
                            scheduler={"keep_alive": "1s", "max_loaded_models": 1})
    wait_until(lambda: ready(sup).status_code == 200, 30, "the pinned model preloaded")
    assert loaded(sup) == ["ai/tiny:latest"]
    [runner] = sup.ps()
    assert runner["pinned"] is True and runner["keep_alive"] == "-1", runner
    # max_loaded_models = 1 and the one slot is pinned: the other model is refused, the pinned one stays.
    r = sup.chat("ai/tiny2")
    assert r.status_code >= 400 and "pinned" in r.text, r.text
    assert loaded(sup) == ["ai/tiny:latest"]
    # Idle far past the 1 s keep-alive: still loaded.
    time.sleep(3)
    assert loaded(sup) == ["ai/tiny:latest"]
    assert sup.chat("ai/tiny").status_code == 200
    assert len(sup.spawns()) == 1


def test_a_pinned_model_stays_while_unpinned_ones_are_evicted(supervisors):
    sup = supervisors.start(models=[supervisors.tiny_model(pinned=True), supervisors.other_tiny_model(),
                                    supervisors.smollm2_model()],
                            scheduler={"max_loaded_models": 2})
    assert sup.chat("ai/tiny").status_code == 200
    assert sup.chat("ai/tiny2").status_code == 200
    assert loaded(sup) == ["ai/tiny2:latest", "ai/tiny:latest"]
    # The least recently used is the pinned one; the other goes instead.
    assert sup.chat("ai/smollm2").status_code == 200
    assert loaded(sup) == ["ai/smollm2:latest", "ai/tiny:latest"]


def test_a_reload_adds_and_removes_references_and_aliases(supervisors, reg):
    push_dmr_gguf_model(reg, "test/later", "v1", supervisors.prereqs.tiny_gguf.read_bytes())
    ref = f"{reg.host}/test/later:v1"
    sup = supervisors.start()
    assert sup.get(f"/models/{ref}").status_code == 404
    declared = {"name": "later", "from": ref, "aliases": ["latest-tiny"], "context_size": 512}
    cfg_text = sup.config_path.read_text()
    sup.config_path.write_text(cfg_text + "\n" + render_toml({}, [declared]))
    sup.signal(signal.SIGHUP)
    wait_until(lambda: sup.get("/models/ai/latest-tiny").status_code == 200, 30, "the added reference pulled")
    model = sup.get("/models/ai/later").json()
    assert {"ai/later:latest", "ai/latest-tiny:latest", ref} <= set(model["tags"]), model
    assert sup.chat("latest-tiny").status_code == 200
    # Removing the alias (the model stays declared) untags it; the model keeps its other names.
    sup.config_path.write_text(cfg_text + "\n" + render_toml({}, [{**declared, "aliases": []}]))
    sup.signal(signal.SIGHUP)
    wait_until(lambda: sup.get("/models/ai/latest-tiny").status_code == 404, 15, "the alias removed")
    assert sup.get("/models/ai/later").status_code == 200
    # Removing the reference with an alias: the alias goes, the model stays in the store.
    sup.config_path.write_text(cfg_text + "\n" + render_toml({}, [{**declared, "aliases": ["gone-soon"]}]))
    sup.signal(signal.SIGHUP)
    wait_until(lambda: sup.get("/models/ai/gone-soon").status_code == 200, 15, "the new alias set")
    sup.config_path.write_text(cfg_text)
    sup.signal(signal.SIGHUP)
    wait_until(lambda: sup.get("/models/ai/gone-soon").status_code == 404, 15, "the alias of a removed model")
    assert sup.get("/models/ai/later").status_code == 200


def test_declared_models_are_checked_with_their_key_paths(supervisors, tmp_path):
    cfg, _, _ = supervisors.write_config(models=[
        {"from": "Not A Reference"},
        {"name": "a", "from": "ai/a", "gguf": str(supervisors.prereqs.tiny_gguf)},
        {"name": "b", "aliases": ["b"]},
        {"name": "c", "aliases": ["shared"]},
        {"name": "d", "aliases": ["shared"]},
    ])
    rc, out, err = supervisors.run_to_exit(cfg)
    assert rc != 0
    for line in ["models[0].from:", "models[1].from: give from or path, not both",
                 "models[2].aliases[0]: ai/b:latest is already a name of this model",
                 "models[4].aliases: ai/shared:latest is already a name of ai/c:latest"]:
        assert line in err, err
