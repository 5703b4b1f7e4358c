"""Configuration reload (SIGHUP and POST /config/reload) with the real binary and engine: new models appear,
changed settings restart idle runners, busy ones are not cut, an invalid file changes nothing."""

from __future__ import annotations

import signal

from harness import assert_openai_error, pid_gone, render_toml, wait_until



def rewrite(sup, models: list[dict], server: dict | None = None, scheduler: dict | None = None) -> None:
    """Rewrites the supervisor's config file with other models (the tables it started with otherwise)."""
    tables = {
        "server": {"listen": "127.0.0.1:0", "shutdown_grace": "10s", **(server or {})},
        "store": {"path": str(sup.store)},
        "engines.llamacpp": {"binary": str(sup.dir / "llama-server-wrapper.sh")},
        "scheduler": {"keep_alive": "5m", "startup_timeout": "60s", "stop_timeout": "5s", **(scheduler or {})},
    }
    sup.config_path.write_text(render_toml(tables, models))


def test_sighup_adds_models_and_restarts_idle_runners_with_new_settings(supervisors, tmp_path):
    sup = supervisors.start()
    assert sup.chat(max_tokens=2).status_code == 200
    [first] = sup.spawns()
    assert first.flag("--ctx-size") == "512"
    tiny2 = supervisors.other_tiny_model()
    rewrite(sup, [supervisors.tiny_model(context_size=1024), tiny2])
    sup.signal(signal.SIGHUP)
    # The idle runner of the changed model is stopped; the new model is imported.
    wait_until(lambda: pid_gone(first.pid), 10, "the idle runner of the changed model to stop")
    wait_until(lambda: "configuration reloaded" in sup.stderr_text(), 10, "the reload log line")
    assert sup.chat(max_tokens=2).status_code == 200
    assert sup.spawns()[-1].flag("--ctx-size") == "1024"
    assert sup.chat(model="ai/tiny2", max_tokens=2).status_code == 200
    assert sup.alive()


def test_an_invalid_file_changes_nothing(supervisors):
    sup = supervisors.start()
    assert sup.chat(max_tokens=2).status_code == 200
    [runner] = sup.spawns()
    sup.config_path.write_text("[scheduler]\nkeep_alive = \"soon\"\n[[models]]\nname = \"../x\"\n")
    sup.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reload failed" in sup.stderr_text(), 10, "the failure log line")
    assert "scheduler.keep_alive: invalid duration" in sup.stderr_text()
    r = sup.post("/config/reload")
    assert r.status_code == 400 and "running one is kept" in r.text and "models[0].name" in r.text, r.text
    # Still serving, on the same engine.
    assert sup.chat(max_tokens=2).status_code == 200
    assert sup.spawns() == [runner] and not pid_gone(runner.pid)


def test_post_reload_reports_and_applies_keys_and_a_busy_runner_is_not_cut(supervisors):
    sup = supervisors.start()
    stream = sup.stream("/engines/v1/chat/completions",
                        {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 200, "stream": True})
    assert stream.status == 200 and stream.next_data()
    rewrite(sup, [supervisors.tiny_model(runtime_flags=["--temp", "0.5"])], server={"api_keys": ["k"]})
    r = sup.post("/config/reload")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["changed"] == ["ai/tiny:latest"] and report["restarted_runners"] == 0, report
    # The stream goes on to its end on the old engine.
    rest = stream.rest()
    assert rest[-1] == "[DONE]", rest[-3:]
    # Keys now apply; with one, the changed settings take effect at the next request (the idle runner reloads).
    assert_openai_error(sup.chat(max_tokens=2), 401)
    r = sup.post("/engines/v1/chat/completions", {"model": "ai/tiny", "messages": [{"role": "user", "content": "x"}],
                                                  "max_tokens": 2}, headers={"Authorization": "Bearer k"})
    assert r.status_code == 200, r.text
    spawns = sup.spawns()
    assert len(spawns) == 2 and spawns[-1].argv[-2:] == ["--temp", "0.5"], spawns
