"""Safetensors models run on vLLM. vLLM cannot run here (no GPU, no CUDA wheels), so the engine is the stand-in
`tests/engines/vllm`: it parses vLLM's CLI (unknown flags are an error, as in vLLM), checks the model directory,
binds its port only after a load delay, serves vLLM's OpenAI routes, spawns an EngineCore worker child, and
records its argv — so these tests assert the exact command line the supervisor builds, readiness, proxying in
every route, engine selection by format, and that stopping an engine stops its whole process group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import REPO, pid_gone, wait_until

STAND_IN = REPO / "tests/engines/vllm"


@pytest.fixture
def qwen(tmp_path) -> Path:
    """A tiny safetensors model directory (max_position_embeddings 2048)."""
    out = tmp_path / "qwen-tiny"
    subprocess.run([sys.executable, str(REPO / "scripts/make-tiny-safetensors-model.py"), str(out)], check=True,
                   capture_output=True)
    return out


def starts(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def start(supervisors, tmp_path, qwen, env=None, scheduler=None, **model):
    log = tmp_path / "vllm-starts.jsonl"
    sup = supervisors.start(
        models=[supervisors.tiny_model(), {"name": "ai/qwen", "path": str(qwen), **model}],
        engines={"vllm": {"binary": str(STAND_IN)}},
        env={"VLLM_STAND_IN_LOG": str(log), "VLLM_STAND_IN_DELAY": "0.5", **(env or {})},
        scheduler=scheduler,
    )
    return sup, log


def chat(sup, prefix="/engines/vllm/v1", **extra):
    body = {"model": "ai/qwen", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4, **extra}
    return sup.post(f"{prefix}/chat/completions", body)


def test_a_safetensors_model_runs_on_vllm_with_dmrs_command_line(supervisors, tmp_path, qwen):
    sup, log = start(supervisors, tmp_path, qwen, runtime_flags=["--enforce-eager", "--max-num-seqs", "8"],
                     gpu_memory_utilization=0.5, hf_overrides={"rope_theta": 10000})
    r = chat(sup)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "ai/qwen:latest"
    assert body["choices"][0]["message"]["content"]
    [s] = starts(log)
    bundle = sup.get("/models/ai/qwen").json()
    argv = s["argv"]
    port = argv[argv.index("--port") + 1]
    assert argv == [
        "serve", argv[1], "--host", "127.0.0.1", "--port", port, "--served-model-name", "ai/qwen:latest",
        # The context size defaults to the model's own maximum (max_position_embeddings).
        "--max-model-len", "2048",
        "--gpu-memory-utilization", "0.5", "--hf-overrides", '{"rope_theta":10000}',
        "--enforce-eager", "--max-num-seqs", "8",
    ]
    # The engine is given the store's bundle: the model directory rebuilt from the blobs.
    model_dir = Path(argv[1])
    assert model_dir.is_relative_to(sup.store) and (model_dir / "config.json").is_file()
    assert (model_dir / "model.safetensors").read_bytes() == (qwen / "model.safetensors").read_bytes()
    assert bundle["config"]["format"] == "safetensors" and bundle["config"]["context_size"] == 2048
    [ps] = sup.ps()
    assert ps["backend_name"] == "vllm" and ps["model_name"] == "ai/qwen:latest" and ps["context_size"] == 2048
    # The same runner serves streams, completions and the unprefixed routes.
    stream = sup.stream("/v1/chat/completions", {"model": "ai/qwen", "messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 3, "stream": True})
    frames = stream.rest()
    assert frames[-1] == "[DONE]" and len(frames) >= 3, frames
    r = sup.post("/engines/v1/completions", {"model": "ai/qwen", "prompt": "once upon", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["object"] == "text_completion", r.text
    assert len(starts(log)) == 1
    status = sup.get("/engines/status").json()
    assert status["vllm"].startswith(f"Running: {STAND_IN}"), status


def test_embeddings_run_a_pooling_runner(supervisors, tmp_path, qwen):
    sup, log = start(supervisors, tmp_path, qwen)
    r = sup.post("/engines/vllm/v1/embeddings", {"model": "ai/qwen", "input": ["a", "b c"]})
    assert r.status_code == 200, r.text
    assert [d["index"] for d in r.json()["data"]] == [0, 1]
    [s] = starts(log)
    assert s["argv"][8:10] == ["--runner", "pooling"], s["argv"]
    assert sup.ps()[0]["mode"] == "embedding"


def test_the_engine_in_the_path_must_be_the_models(supervisors, tmp_path, qwen):
    sup, log = start(supervisors, tmp_path, qwen)
    r = chat(sup, prefix="/engines/llama.cpp/v1")
    assert r.status_code == 400 and "served by vllm, not llama.cpp" in r.json()["error"]["message"], r.text
    r = sup.chat(model="ai/tiny", prefix="/engines/vllm/v1")
    assert r.status_code == 400 and "served by llama.cpp, not vllm" in r.json()["error"]["message"], r.text
    r = sup.post("/v1/images/generations", {"model": "ai/qwen", "prompt": "a cat"})
    assert r.status_code == 400 and "cannot generate images" in r.text, r.text
    assert sup.post("/engines/sglang/v1/chat/completions", {"model": "ai/qwen"}).status_code == 404
    assert starts(log) == [] and sup.ps() == []


def test_stopping_a_vllm_engine_stops_its_worker_too(supervisors, tmp_path, qwen):
    sup, log = start(supervisors, tmp_path, qwen)
    assert chat(sup).status_code == 200
    [s] = starts(log)
    assert not pid_gone(s["pid"]) and not pid_gone(s["worker_pid"])
    assert sup.post("/engines/unload", {"models": ["ai/qwen"]}).json()["unloaded_runners"] == 1
    wait_until(lambda: pid_gone(s["pid"]) and pid_gone(s["worker_pid"]), 10, "vLLM and its worker to exit")


def test_an_engine_that_ignores_sigterm_is_killed_with_its_worker(supervisors, tmp_path, qwen):
    sup, log = start(supervisors, tmp_path, qwen, env={"VLLM_STAND_IN_STUBBORN": "1"},
                     scheduler={"stop_timeout": "1s"})
    assert chat(sup).status_code == 200
    [s] = starts(log)
    started = time.monotonic()
    sup.post("/engines/unload", {"models": ["ai/qwen"]})
    wait_until(lambda: pid_gone(s["pid"]) and pid_gone(s["worker_pid"]), 10, "the group SIGKILL")
    assert time.monotonic() - started >= 0.9


def test_a_safetensors_directory_imported_over_the_api_is_served(supervisors, tmp_path, qwen):
    sup, log = start(supervisors, tmp_path, qwen)
    other = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(qwen), str(other)], check=True)
    (other / "generation_config.json").write_text('{"temperature": 0.5}')
    r = sup.post("/models/create", {"from": str(other), "name": "ai/qwen-copy"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[-1]["type"] == "success", lines
    r = sup.post("/v1/chat/completions", {"model": "ai/qwen-copy", "messages": [{"role": "user", "content": "x"}],
                                          "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "ai/qwen-copy:latest", r.text
    r = sup.post("/models/create", {"from": str(tmp_path)})
    assert r.status_code == 400 and "is not a model" in r.text, r.text


def test_configure_checks_vllm_settings_and_the_next_start_uses_them(supervisors, tmp_path, qwen):
    sup, log = start(supervisors, tmp_path, qwen)
    bad = [
        ({"vllm": {"hf-overrides": {"rope-theta": 1}}}, "not an identifier"),
        ({"vllm": {"gpu-memory-utilization": 1.5}}, "must be > 0"),
        ({"runtime-flags": ["--ctx-size", "8"]}, "not an allowed runtime flag for vllm"),
        ({"runtime-flags": ["--download-dir", "/tmp"]}, "may not carry paths"),
    ]
    for extra, why in bad:
        r = sup.post("/engines/vllm/_configure", {"model": "ai/qwen", **extra})
        assert r.status_code == 400 and why in r.text, (extra, r.text)
    r = sup.post("/engines/vllm/_configure", {"model": "ai/qwen", "context-size": 1024,
                                              "vllm": {"gpu-memory-utilization": 0.7},
                                              "runtime-flags": ["--enforce-eager"]})
    assert r.status_code == 202, r.text
    wait_until(lambda: len(starts(log)) == 1 and sup.ps() and not sup.ps()[0]["loading"], 15,
               "the preload after configure")
    argv = starts(log)[0]["argv"]
    assert argv[argv.index("--max-model-len") + 1] == "1024"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.7" and argv[-1] == "--enforce-eager"
    listed = sup.get("/engines/_configure?model=ai/qwen").json()
    assert listed[0]["Backend"] == "vllm" and listed[0]["Config"]["vllm"] == {"gpu-memory-utilization": 0.7}


def test_a_context_longer_than_the_model_is_the_engines_error(supervisors, tmp_path, qwen):
    sup, log = start(supervisors, tmp_path, qwen, context_size=4096)
    r = chat(sup)
    assert r.status_code == 502, r.text
    assert "max_model_len" in r.json()["error"]["message"]
    assert sup.ps() == []


def test_ollama_and_anthropic_clients_reach_a_vllm_model_too(supervisors, tmp_path, qwen):
    sup, log = start(supervisors, tmp_path, qwen)
    r = sup.post("/api/chat", {"model": "ai/qwen", "messages": [{"role": "user", "content": "hi"}], "stream": False,
                               "options": {"num_predict": 3}})
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True and r.json()["message"]["content"]
    r = sup.post("/v1/messages", {"model": "ai/qwen", "max_tokens": 3,
                                  "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "message" and r.json()["content"][0]["text"]
    # Token counts come from vLLM's /tokenize (it has no llama-server input_tokens route); the stand-in counts the
    # words of every message, the system prompt included.
    r = sup.post("/v1/messages/count_tokens", {"model": "ai/qwen", "system": "be brief",
                                               "messages": [{"role": "user", "content": "one two three"}]})
    assert r.status_code == 200 and r.json() == {"input_tokens": 5}, r.text
    assert len(starts(log)) == 1


def test_the_responses_api_reaches_a_vllm_model_translated_to_chat(supervisors, tmp_path, qwen):
    # vLLM serves /v1/responses itself; the supervisor translates for every engine instead (one store, one chain),
    # so the stand-in, which has no /v1/responses, answers it through its chat route.
    sup, log = start(supervisors, tmp_path, qwen)
    r = sup.post("/engines/vllm/v1/responses", {"model": "ai/qwen", "input": "hi", "max_output_tokens": 3})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["object"] == "response" and first["model"] == "ai/qwen:latest", first
    assert first["output"][0]["type"] == "message" and first["output"][0]["content"][0]["text"], first
    r = sup.post("/v1/responses", {"model": "ai/qwen", "input": "again", "max_output_tokens": 3,
                                   "previous_response_id": first["id"]})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["input_tokens"] > first["usage"]["input_tokens"], r.json()["usage"]
    stream = sup.stream("/v1/responses", {"model": "ai/qwen", "input": "hi", "max_output_tokens": 3, "stream": True})
    events = [json.loads(d) for d in stream.rest()]
    assert events[0]["type"] == "response.created", events[:2]
    assert events[-1]["type"] in ("response.completed", "response.incomplete"), events[-1]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert len(starts(log)) == 1
