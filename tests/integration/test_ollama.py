"""Ollama's API through the official `ollama` Python package, translated to the real llama-server's OpenAI API.

The tiny model never stops by itself (its end tokens are zeroed), so at temperature 0 it generates exactly
`num_predict` tokens: counts are exact, not merely positive.
"""

from __future__ import annotations

import json
import os
import signal

import ollama
import pytest
import requests

from harness import engine_spy, pid_gone, wait_until

OPTS = {"temperature": 0, "num_predict": 5}
MSGS = [{"role": "user", "content": "Hello"}]


def client(sup) -> ollama.Client:
    return ollama.Client(host=sup.base)


def test_chat_non_streaming(sup):
    r = client(sup).chat(model="ai/tiny", messages=MSGS, options=OPTS, stream=False)
    assert r.done is True and r.done_reason == "length", r
    assert r.message.role == "assistant" and r.message.content, r
    assert r.eval_count == 5, r
    assert r.prompt_eval_count and r.prompt_eval_count > 0, r
    assert r.total_duration and r.total_duration >= (r.load_duration or 0) > 0, r
    assert r.model == "ai/tiny:latest"


def test_chat_streaming_ends_with_totals(sup):
    parts = list(client(sup).chat(model="ai/tiny", messages=MSGS, options=OPTS, stream=True))
    assert len(parts) >= 2, parts
    *pieces, last = parts
    assert all(p.done is False and p.message.content for p in pieces), pieces
    assert last.done is True and last.done_reason == "length", last
    assert last.eval_count == 5 and last.prompt_eval_count > 0, last
    assert last.eval_duration and last.eval_duration > 0, last
    # The same text as the non-streaming answer (deterministic at temperature 0).
    whole = client(sup).chat(model="ai/tiny", messages=MSGS, options=OPTS, stream=False).message.content
    assert "".join(p.message.content for p in pieces) == whole


def test_generate_both_ways(sup):
    c = client(sup)
    r = c.generate(model="ai/tiny", prompt="Once", options=OPTS, stream=False)
    assert r.done is True and r.response and r.eval_count == 5, r
    parts = list(c.generate(model="ai/tiny", prompt="Once", options=OPTS, stream=True))
    assert parts[-1].done is True and parts[-1].eval_count == 5, parts[-1]
    assert "".join(p.response for p in parts[:-1]) == r.response


def test_stream_is_ndjson_by_default(sup):
    r = sup.post("/api/chat", {"model": "ai/tiny", "messages": MSGS, "options": OPTS})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson", r.headers
    import json
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[-1]["done"] is True and all(line["done"] is False for line in lines[:-1])


def test_list_show_ps_version(sup, prereqs):
    c = client(sup)
    [m] = c.list().models
    assert m.model == "ai/tiny:latest", m
    assert m.size == os.path.getsize(prereqs.tiny_gguf), m
    assert m.details.format == "gguf" and m.details.family == "llama", m
    assert len(m.digest) == 64, m
    s = c.show("ai/tiny")
    assert s.details.quantization_level == "F32", s
    assert "im_start" in (s.template or ""), s.template
    assert s.modelinfo["general.architecture"] == "llama", s.modelinfo
    assert c.ps().models == []
    c.chat(model="tiny", messages=MSGS, options=OPTS, stream=False)
    [running] = c.ps().models
    assert running.model == "ai/tiny:latest", running
    v = sup.get("/api/version")
    assert v.status_code == 200 and v.json()["version"], v.text


def test_errors_in_ollama_shape(sup):
    with pytest.raises(ollama.ResponseError) as e:
        client(sup).chat(model="nope", messages=MSGS, stream=False)
    assert e.value.status_code == 404 and "not found" in e.value.error
    r = sup.post("/api/chat", data=b'{"model": ')
    assert r.status_code == 400 and "invalid JSON" in r.json()["error"], r.text
    r = sup.post("/api/show", {"model": "nope"})
    assert r.status_code == 404 and r.json()["error"], r.text


def test_delete(sup, prereqs):
    c = client(sup)
    r = sup.post("/models/create", {"from": str(prereqs.tiny_gguf), "name": "ai/second"})
    assert r.status_code == 200 and '"success"' in r.text, r.text
    assert {m.model for m in c.list().models} == {"ai/tiny:latest", "ai/second:latest"}
    c.delete("ai/second")
    assert [m.model for m in c.list().models] == ["ai/tiny:latest"]
    with pytest.raises(ollama.ResponseError) as e:
        c.delete("ai/second")
    assert e.value.status_code == 404


def test_embed_and_legacy_embeddings_match_the_openai_route(sup):
    c = client(sup)
    r = c.embed(model="ai/tiny", input=["hello", "world"])
    assert len(r.embeddings) == 2 and r.model == "ai/tiny:latest", r
    assert r.prompt_eval_count and r.prompt_eval_count > 0, r
    assert r.total_duration >= r.load_duration > 0, r
    one = c.embed(model="ai/tiny", input="hello").embeddings
    assert len(one) == 1 and len(one[0]) == len(r.embeddings[0])
    legacy = c.embeddings(model="ai/tiny", prompt="hello").embedding
    openai = sup.post("/v1/embeddings", {"model": "ai/tiny", "input": "hello"}).json()["data"][0]["embedding"]
    # The same runner and text: the same vector, whatever the route.
    assert legacy == pytest.approx(openai, abs=1e-6) and one[0] == pytest.approx(openai, abs=1e-6)
    with pytest.raises(ollama.ResponseError) as e:
        c.embed(model="nope", input="x")
    assert e.value.status_code == 404


def test_keep_alive_zero_unloads_after_the_request_and_empty_prompts_load_or_unload(sup):
    c = client(sup)
    r = c.generate(model="ai/tiny", prompt="", stream=False)
    assert r.done and r.done_reason == "load", r
    [running] = c.ps().models
    assert running.model == "ai/tiny:latest"
    r = c.generate(model="ai/tiny", prompt="", keep_alive=0, stream=False)
    assert r.done and r.done_reason == "unload", r
    wait_until(lambda: c.ps().models == [], 5, "unload")
    # keep_alive 0 on a real request: answered, then the runner stops.
    r = c.chat(model="ai/tiny", messages=MSGS, options=OPTS, keep_alive=0, stream=False)
    assert r.eval_count == 5, r
    wait_until(lambda: sup.ps() == [], 5, "runner stopped after keep_alive 0")
    # A duration string sets the expiry Ollama reports.
    c.chat(model="ai/tiny", messages=MSGS, options=OPTS, keep_alive="1h", stream=False)
    [entry] = sup.ps()
    assert entry["keep_alive"] == "1h0m0s", entry
    r = sup.post("/api/generate", {"model": "ai/tiny", "prompt": "x", "keep_alive": "soon"})
    assert r.status_code == 400 and "keep_alive" in r.json()["error"], r.text


def test_num_ctx_restarts_the_runner_with_that_context(sup):
    c = client(sup)
    c.generate(model="ai/tiny", prompt="x", options=OPTS, stream=False)
    first = sup.wait_spawns(1)[0]
    assert first.flag("--ctx-size") == "512"
    r = c.generate(model="ai/tiny", prompt="x", options={**OPTS, "num_ctx": 1024}, stream=False)
    assert r.eval_count == 5, r
    spawns = sup.wait_spawns(2)
    assert spawns[1].flag("--ctx-size") == "1024", spawns[1].argv
    wait_until(lambda: pid_gone(first.pid), 5, "the old runner to stop")
    assert [p["pid"] for p in sup.ps()] == [spawns[1].pid]


def test_format_tools_and_images(sup):
    c = client(sup)
    # `format` reaches the engine as a grammar. llama-server cannot build a JSON grammar over the tiny model's
    # byte-level vocabulary and says so with a 400, which arrives in Ollama's shape; the same request without
    # `format` succeeds, so the refusal is the grammar's.
    for fmt in ("json", {"type": "object", "properties": {"a": {"type": "boolean"}}}):
        with pytest.raises(ollama.ResponseError) as e:
            c.generate(model="ai/tiny", prompt="x", format=fmt, options=OPTS, stream=False)
        assert e.value.status_code == 400 and "samplers" in e.value.error, e.value
    assert c.generate(model="ai/tiny", prompt="x", options=OPTS, stream=False).eval_count == 5
    # A text-only model refuses images with a 400 before anything is loaded.
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="ai/tiny", messages=[{"role": "user", "content": "what is it?", "images": [PNG_1PX]}], stream=False)
    assert e.value.status_code == 400 and "images" in e.value.error, e.value
    r = sup.post("/api/generate", {"model": "ai/tiny", "prompt": "x", "format": "yaml"})
    assert r.status_code == 400 and r.json()["error"].startswith("format"), r.text


def test_tools_and_tool_history_reach_the_engine(supervisors, tmp_path):
    spy = engine_spy(supervisors.prereqs, tmp_path / "spy")
    sup = supervisors.start(engine_binary=str(spy.binary), env=spy.env)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    history = MSGS + [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    r = client(sup).chat(model="ai/tiny", messages=history, tools=tools, options=OPTS, stream=False)
    assert r.done and r.eval_count == 5, r
    # The tiny model's template does not render tools, so the answer is the same without them: the request the
    # engine received shows that the tools and the tool-call history were translated, not dropped.
    [sent] = spy.bodies()
    assert sent["tools"] == tools, sent
    assistant, tool = sent["messages"][1], sent["messages"][2]
    [call] = assistant["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather", assistant
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}, assistant
    assert tool["role"] == "tool" and tool["content"] == "sunny", tool


PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def test_engine_killed_mid_stream_ends_with_an_error_line(supervisors):
    # As in test_anthropic.py: at --ctx-size 8192 the tiny model streams 4000 tokens in seconds, so an engine killed
    # right after the first line is killed mid-generation.
    sup = supervisors.start(models=[supervisors.tiny_model(context_size=8192)])
    r = requests.post(sup.url("/api/chat"), json={"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}],
                                                  "options": {"num_predict": 4000}}, stream=True, timeout=30)
    assert r.status_code == 200
    lines = r.iter_lines()
    first = json.loads(next(lines))
    assert first["done"] is False
    [spawn] = sup.spawns()
    os.kill(spawn.pid, signal.SIGKILL)
    rest = [json.loads(line) for line in lines if line]
    assert rest and "error" in rest[-1] and rest[-1]["error"], rest[-3:]
    assert not any(x.get("done") for x in rest), rest[-3:]
    wait_until(lambda: pid_gone(spawn.pid), 5.0, "the killed engine to be reaped")
    r = sup.post("/api/chat", {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False,
                               "options": {"num_predict": 2}})
    assert r.status_code == 200 and len(sup.spawns()) == 2
