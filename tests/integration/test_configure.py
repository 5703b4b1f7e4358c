"""POST/GET /engines/_configure (DMR's shapes): settings reach the engine's argv, persist across restarts (DMR loses
them), flags from the network are checked against the allowlist, a busy runner is not reconfigured (409)."""

from __future__ import annotations

import pytest

from harness import wait_until


def configure(sup, **body):
    return sup.post("/engines/_configure", body)


def test_settings_reach_the_engine_and_survive_a_restart(supervisors, tmp_path):
    store = tmp_path / "store"
    sup = supervisors.start(store=store)
    r = configure(sup, **{"model": "ai/tiny", "context-size": 1024, "runtime-flags": ["--temp", "0.7"],
                          "keep_alive": "10m"})
    assert r.status_code == 202, r.text
    # Preloaded in the background with the new settings.
    [spawn] = sup.wait_spawns(1)
    assert spawn.flag("--ctx-size") == "1024" and spawn.argv[-2:] == ["--temp", "0.7"], spawn.argv
    wait_until(lambda: sup.ps() and not sup.ps()[0]["loading"], 10, "the preload")
    assert sup.ps()[0]["keep_alive"] == "10m0s"
    [listed] = sup.get("/engines/_configure").json()
    assert listed["Backend"] == "llama.cpp" and listed["Model"] == "ai/tiny:latest" and listed["Mode"] == "completion"
    assert listed["ModelID"].startswith("sha256:")
    assert listed["Config"] == {"context-size": 1024, "runtime-flags": ["--temp", "0.7"], "keep_alive": "10m"}
    assert sup.get("/engines/_configure?model=ai/tiny").json() == [listed]
    sup.stop()

    again = supervisors.start(store=store)
    assert again.chat(max_tokens=2).status_code == 200
    [spawn] = again.spawns()
    assert spawn.flag("--ctx-size") == "1024" and spawn.argv[-2:] == ["--temp", "0.7"], spawn.argv


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "ai/tiny", "runtime-flags": ["--log-file", "/etc/x"]}, 400, "may not carry paths"),
    ({"model": "ai/tiny", "runtime-flags": ["--model", "other.gguf"]}, 400, "\"--model\" is not an allowed runtime flag"),
    ({"model": "ai/tiny", "raw-runtime-flags": "--temp 0 --slot-save-path x"}, 400, "not an allowed"),
    ({"model": "ai/tiny", "runtime-flags": ["--seed=--log-file=x"]}, 400, "may not start with '-'"),
    ({"model": "ai/tiny", "raw-runtime-flags": "--temp '0"}, 400, "raw-runtime-flags"),
    ({"model": "ai/tiny", "context-size": -5}, 400, "must be > 0 or -1"),
    ({"model": "ai/tiny", "mode": "image-generation"}, 400, "not supported"),
    ({"model": "ai/tiny", "speculative": {"draft_model": "x"}}, 400, "speculative"),
    ({"context-size": 1024}, 400, "\"model\" is required"),
    ({"model": "ai/nope", "context-size": 1024}, 404, "not found"),
])
def test_bad_configurations_are_refused_and_nothing_is_stored(sup, body, status, fragment):
    r = configure(sup, **body)
    assert r.status_code == status and fragment in r.json()["error"]["message"], r.text
    assert sup.get("/engines/_configure").json() == []
    assert sup.spawns() == []


def test_malformed_json_and_unknown_engine(sup):
    status, _, body = sup.raw("POST", "/engines/_configure", b"{nope")
    assert status == 400, body
    r = sup.post("/engines/nope/_configure", {"model": "ai/tiny"})
    assert r.status_code == 400 and "unknown engine" in r.text
    # A known engine that is not the model's own: its flags would reach the wrong engine.
    r = sup.post("/engines/vllm/_configure", {"model": "ai/tiny", "runtime-flags": ["--enforce-eager"]})
    assert r.status_code == 400 and "runs on llama.cpp, not vllm" in r.text, r.text


def test_a_busy_runner_is_not_reconfigured(sup):
    stream = sup.stream("/engines/v1/chat/completions",
                        {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
                         "stream": True})
    assert stream.status == 200 and stream.next_data()
    r = configure(sup, **{"model": "ai/tiny", "context-size": 2048})
    assert r.status_code == 409 and "runner already active" in r.text, r.text
    assert stream.rest()[-1] == "[DONE]"
    assert configure(sup, **{"model": "ai/tiny", "context-size": 2048}).status_code == 202


def test_deleting_the_model_drops_its_settings(sup):
    assert configure(sup, **{"model": "ai/tiny", "runtime-flags": ["--temp", "0.1"]}).status_code == 202
    wait_until(lambda: sup.ps() and not sup.ps()[0]["loading"], 10, "the preload")
    assert sup.post("/engines/unload", {"all": True}).status_code == 200
    r = sup.delete("/models/ai/tiny")
    assert r.status_code == 200, r.text
    assert sup.get("/engines/_configure").json() == []
