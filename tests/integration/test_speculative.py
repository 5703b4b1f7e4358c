"""Speculative decoding (issue 18, item 2): `_configure`'s `speculative` object as DMR takes it and `[[models]]
speculative`, with a draft that is a model of the store, by name. The real llama-server gets `--model-draft <the
draft's blob>` (with `--spec-type draft-simple`, without which the pinned build loads the draft and never uses it)
and reports how many drafted tokens it accepted, in each answer's `timings` and in its own metrics, which our
/metrics passes through. SmolLM2 drafting for itself at temperature 0 accepts (nearly) every drafted token. The vLLM
stand-in records `--speculative-config` with the draft's directory. Bad drafts and ranges are 400s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import REPO, figure, pid_gone, sha256_file, wait_until
from test_vllm import STAND_IN, starts

SPEC = {"draft_model": "ai/smollm2", "num_tokens": 8, "min_acceptance_rate": 0.5}
PROMPT = "Count from 1 to 30, separated by commas."


def configure(sup, **body):
    return sup.post("/engines/_configure", body)


def ask(sup, model: str, max_tokens: int = 64) -> dict:
    r = sup.post("/engines/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
        "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    return r.json()


def draft_of(spawn) -> Path:
    return Path(spawn.flag("--model-draft"))


def engine_metric(sup, name: str, model: str) -> float:
    families = {f.name: f.samples for f in text_string_to_metric_families(sup.get("/metrics").text)}
    found = [s.value for samples in families.values() for s in samples
             if s.name == name and s.labels.get("model") == model]
    assert len(found) == 1, (name, model, found)
    return found[0]


def test_smollm2_drafting_for_itself_accepts_the_drafts(supervisors, prereqs):
    """`_configure` with DMR's body: the preload's argv names the draft's blob in the store, the answer carries the
    engine's draft counts, and the engine's acceptance counters reach our /metrics."""
    sup = supervisors.start(models=[supervisors.smollm2_model()])
    r = configure(sup, model="ai/smollm2", speculative=SPEC)
    assert r.status_code == 202, r.text
    assert r.json()["Config"]["speculative"] == {**SPEC, "draft_model": "ai/smollm2:latest"}
    [spawn] = sup.wait_spawns(1, timeout=30)
    draft = draft_of(spawn)
    # The draft is the store's blob (the same one as the model here), never a path given over the network.
    assert draft.is_relative_to(sup.store) and draft == Path(spawn.flag("--model")), spawn.argv
    assert sha256_file(draft) == sha256_file(prereqs.smollm2_gguf)
    assert spawn.flag("--spec-type") == "draft-simple"
    assert (spawn.flag("--spec-draft-n-max"), spawn.flag("--spec-draft-p-min")) == ("8", "0.5")
    body = ask(sup, "ai/smollm2")
    assert body["choices"][0]["message"]["content"].startswith("1"), body
    timings = body["timings"]
    drafted, accepted = timings["draft_n"], timings["draft_n_accepted"]
    figure("speculative_smollm2_self_draft_n", drafted)
    figure("speculative_smollm2_self_acceptance", accepted / drafted)
    assert drafted > 0 and accepted / drafted >= 0.8, timings
    # The engine's own counters, relabelled with the model by our /metrics.
    model = "ai/smollm2:latest"
    assert engine_metric(sup, "llamacpp:spec_decode_num_draft_tokens_total", model) == drafted
    assert engine_metric(sup, "llamacpp:spec_decode_num_accepted_tokens_total", model) == accepted
    # Its log line says the same.
    # Its log line says the same (engine lines reach /logs in bursts, up to 20 ms late).
    wait_until(lambda: "draft acceptance" in sup.get("/logs").text, 5, "the engine's draft acceptance line")
    [spawn] = sup.spawns()
    [runner] = sup.ps()
    assert runner["draft_model"] == "ai/smollm2:latest" and runner["pinned"] is False, runner


def test_a_new_draft_is_a_new_runner_and_settings_persist_over_the_configs(supervisors, tmp_path):
    """The config's draft (tiny2) is used until `_configure` names another (tiny itself), which replaces the idle
    runner and survives a restart; `GET /engines/_configure` lists it."""
    store = tmp_path / "store"
    tiny2 = supervisors.other_tiny_model()
    models = lambda: [supervisors.tiny_model(speculative={"draft_model": "ai/tiny2", "num_tokens": 4}), tiny2]
    sup = supervisors.start(models=models(), store=store)
    body = ask(sup, "ai/tiny", max_tokens=16)
    assert "draft_n" in body["timings"], body["timings"]
    [first] = sup.spawns()
    assert draft_of(first).is_relative_to(sup.store), first.argv
    assert sha256_file(draft_of(first)) == sha256_file(Path(tiny2["gguf"]))
    assert first.flag("--spec-draft-n-max") == "4" and "--spec-draft-p-min" not in first.argv
    assert draft_of(first) != Path(first.flag("--model"))

    r = configure(sup, model="ai/tiny", speculative={"draft_model": "tiny", "num_tokens": 6})
    assert r.status_code == 202, r.text
    [_, second] = sup.wait_spawns(2)
    assert draft_of(second) == Path(second.flag("--model")) and second.flag("--spec-draft-n-max") == "6"
    wait_until(lambda: pid_gone(first.pid), 10, "the runner with the old draft to stop")
    wait_until(lambda: [p["loading"] for p in sup.ps()] == [False], 30, "one runner, loaded")
    assert ask(sup, "ai/tiny", max_tokens=8)["timings"]["draft_n"] >= 0
    [listed] = sup.get("/engines/_configure?model=ai/tiny").json()
    assert listed["Config"]["speculative"] == {"draft_model": "ai/tiny:latest", "num_tokens": 6}
    sup.stop()

    again = supervisors.start(models=models(), store=store)
    ask(again, "ai/tiny", max_tokens=4)
    [spawn] = again.spawns()
    assert draft_of(spawn) == Path(spawn.flag("--model")) and spawn.flag("--spec-draft-n-max") == "6", spawn.argv


def test_deleting_a_draft_stops_the_runner_that_loads_it(supervisors):
    tiny2 = supervisors.other_tiny_model()
    sup = supervisors.start(models=[supervisors.tiny_model(speculative={"draft_model": "ai/tiny2"}), tiny2])
    ask(sup, "ai/tiny", max_tokens=4)
    [spawn] = sup.spawns()
    [runner] = sup.ps()
    assert runner["draft_model"] == "ai/tiny2:latest", runner
    r = sup.delete("/models/ai/tiny2")
    assert r.status_code == 200, r.text
    # Its runner is gone with it (no engine keeps a deleted draft), and the next chat says the draft is missing.
    wait_until(lambda: pid_gone(spawn.pid), 10, "the runner drafting with the deleted model to stop")
    assert sup.ps() == []
    r = sup.chat("ai/tiny")
    assert r.status_code == 400 and "speculative.draft_model" in r.text, r.text


@pytest.fixture
def qwen(tmp_path) -> Path:
    out = tmp_path / "qwen-tiny"
    subprocess.run([sys.executable, str(REPO / "scripts/make-tiny-safetensors-model.py"), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.mark.parametrize("speculative, fragment", [
    ({"draft_model": "ai/nope"}, "speculative.draft_model: model ai/nope:latest is not in the store"),
    ({"draft_model": "ai/qwen"}, "speculative.draft_model: ai/qwen:latest is a safetensors model, run by vllm"),
    ({"draft_model": "ai/tiny", "num_tokens": 0}, "speculative.num_tokens: must be 1 to 64, not 0"),
    ({"draft_model": "ai/tiny", "num_tokens": 65}, "speculative.num_tokens: must be 1 to 64, not 65"),
    ({"draft_model": "ai/tiny", "min_acceptance_rate": 1.5}, "speculative.min_acceptance_rate: must be 0 to 1"),
    ({"draft_model": "ai/tiny", "min_acceptance_rate": -0.1}, "speculative.min_acceptance_rate: must be 0 to 1"),
    ({"num_tokens": 4}, "speculative.draft_model is required"),
    ({"draft_model": "/etc/passwd"}, "speculative.draft_model: "),
    ({"draft_model": "ai/tiny", "draft_path": "/tmp/x.gguf"}, "draft_path"),
])
def test_bad_drafts_and_ranges_are_400_and_nothing_is_stored(supervisors, qwen, speculative, fragment):
    sup = supervisors.start(models=[supervisors.tiny_model(), {"name": "ai/qwen", "path": str(qwen)}])
    r = configure(sup, model="ai/tiny", speculative=speculative)
    assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text
    assert r.json()["error"]["type"] == "invalid_request_error", r.text
    assert sup.get("/engines/_configure").json() == []
    assert sup.spawns() == []


def test_config_file_drafts_are_checked(supervisors):
    """Ranges and names are config errors with their key paths; a draft missing from the store is the request's
    400 (the store is known only once the daemon runs)."""
    cfg, _, _ = supervisors.write_config(models=[supervisors.tiny_model(
        speculative={"draft_model": "ai/tiny", "num_tokens": 0, "min_acceptance_rate": 2.0, "draft": "x"})])
    rc, _, err = supervisors.run_to_exit(cfg)
    assert rc == 2, err
    for line in ["models[0].speculative.num_tokens: must be 1 to 64, not 0",
                 "models[0].speculative.min_acceptance_rate: must be 0 to 1, not 2",
                 "models[0].speculative.draft: unknown key"]:
        assert line in err, err
    sup = supervisors.start(models=[supervisors.tiny_model(speculative={"draft_model": "ai/gone"})])
    r = sup.chat()
    assert r.status_code == 400 and "ai/gone:latest is not in the store" in r.json()["error"]["message"], r.text
    assert sup.spawns() == []


def test_vllm_gets_the_drafts_directory_in_its_speculative_config(supervisors, tmp_path, qwen):
    log = tmp_path / "vllm-starts.jsonl"
    sup = supervisors.start(
        models=[supervisors.tiny_model(),
                {"name": "ai/qwen", "path": str(qwen),
                 "speculative": {"draft_model": "ai/qwen-draft", "num_tokens": 5}},
                {"name": "ai/qwen-draft", "path": str(qwen)}],
        engines={"vllm": {"binary": str(STAND_IN)}},
        env={"VLLM_STAND_IN_LOG": str(log), "VLLM_STAND_IN_DELAY": "0.2"},
    )
    r = sup.post("/engines/vllm/v1/chat/completions",
                 {"model": "ai/qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200, r.text
    [s] = starts(log)
    argv = s["argv"]
    config = json.loads(argv[argv.index("--speculative-config") + 1])
    # The same files under another name: the store's bundle directory, as the model's own.
    assert config == {"model": argv[1], "num_speculative_tokens": 5}, argv
    assert Path(config["model"]).is_relative_to(sup.store) and (Path(config["model"]) / "config.json").is_file()
    # A GGUF draft for a safetensors model is refused, with the reason.
    r = configure(sup, model="ai/qwen", speculative={"draft_model": "ai/tiny"})
    assert r.status_code == 400 and "is a gguf model, run by llama.cpp" in r.json()["error"]["message"], r.text
