"""OpenAI-compatible inference routes, proxied to a real llama-server, and their error envelopes."""

from __future__ import annotations

import json

import pytest

from harness import assert_openai_error, parse_chunks

PREFIXES = ["/engines/v1", "/engines/llama.cpp/v1", "/v1"]


def test_chat_completion(sup):
    r = sup.chat(max_tokens=12)
    assert r.status_code == 200, r.text
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert body["object"] == "chat.completion", body
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant", body
    content = choice["message"]["content"]
    assert isinstance(content, str) and content, body
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 12, usage
    assert usage["prompt_tokens"] > 0, usage
    assert choice["finish_reason"] in ("length", "stop"), body


def test_chat_is_deterministic_at_temperature_0(sup):
    a = sup.chat(max_tokens=16).json()["choices"][0]["message"]["content"]
    b = sup.chat(max_tokens=16).json()["choices"][0]["message"]["content"]
    assert a == b


def test_chat_stream(sup):
    s = sup.stream("/engines/v1/chat/completions",
                   {"model": "ai/tiny", "stream": True, "max_tokens": 10,
                    "messages": [{"role": "user", "content": "Hello"}]})
    try:
        assert s.status == 200
        assert s.headers.get("content-type", "").startswith("text/event-stream"), dict(s.headers)
        frames = s.rest()
    finally:
        s.close()
    assert s.transport_error is None, s.transport_error
    assert frames and frames[-1] == "[DONE]", frames[-3:]
    assert frames.count("[DONE]") == 1
    chunks = list(parse_chunks(frames))
    assert len(chunks) >= 2, frames
    assert all(c["object"] == "chat.completion.chunk" for c in chunks), chunks
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    assert text, chunks
    finishes = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")]
    assert finishes[-1] in ("length", "stop"), finishes


def test_completions(sup):
    r = sup.post("/engines/v1/completions", {"model": "ai/tiny", "prompt": "Hello world", "max_tokens": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion", body
    assert isinstance(body["choices"][0]["text"], str) and body["choices"][0]["text"], body
    assert 1 <= body["usage"]["completion_tokens"] <= 6, body


def test_embeddings_use_a_second_runner(sup):
    r = sup.post("/engines/v1/embeddings", {"model": "ai/tiny", "input": "hello world"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list", body
    emb = body["data"][0]["embedding"]
    assert len(emb) == 64 and all(isinstance(x, float) for x in emb), emb[:4]
    assert any(x != 0.0 for x in emb)

    spawns = sup.spawns()
    assert len(spawns) == 1, spawns
    argv = spawns[0].argv
    assert argv[6:] == ["--ctx-size", "512", "--alias", "ai/tiny:latest", "--metrics", "--embeddings", "--pooling", "mean", "--temp", "0"], argv

    r = sup.chat(max_tokens=4)
    assert r.status_code == 200, r.text
    spawns = sup.spawns()
    assert len(spawns) == 2, "a completion request needs its own runner"
    assert spawns[1].pid != spawns[0].pid
    assert "--embeddings" not in spawns[1].argv, spawns[1].argv
    modes = sorted((p["mode"], p["pid"]) for p in sup.ps())
    assert modes == sorted([("embedding", spawns[0].pid), ("completion", spawns[1].pid)]), modes

    # both runners stay and serve
    r = sup.post("/v1/embeddings", {"model": "ai/tiny", "input": ["a", "b"]})
    assert r.status_code == 200 and len(r.json()["data"]) == 2, r.text
    assert len(sup.spawns()) == 2


def test_embeddings_respect_pooling_in_runtime_flags(supervisors):
    sup = supervisors.start(models=[supervisors.tiny_model(runtime_flags=["--pooling", "last"])])
    r = sup.post("/engines/v1/embeddings", {"model": "ai/tiny", "input": "hello"})
    assert r.status_code == 200, r.text
    argv = sup.spawns()[0].argv
    assert argv[6:] == ["--ctx-size", "512", "--alias", "ai/tiny:latest", "--metrics", "--embeddings", "--pooling", "last"], argv


@pytest.mark.parametrize("prefix", PREFIXES)
def test_route_prefixes(sup, prefix):
    r = sup.chat(prefix=prefix, max_tokens=3)
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"
    r = sup.post(prefix + "/completions", {"model": "ai/tiny", "prompt": "hi", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["object"] == "text_completion", r.text
    assert len(sup.spawns()) == 1


def test_all_prefixes_share_one_runner(sup):
    for prefix in PREFIXES:
        assert sup.chat(prefix=prefix, max_tokens=2).status_code == 200
    assert len(sup.spawns()) == 1


def test_unknown_engine_segment_is_404(sup):
    r = sup.post("/engines/foo/v1/chat/completions",
                 {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404, r.text
    assert sup.spawns() == []


def test_unknown_fields_pass_through(sup):
    # `n_predict` is a llama-server field, not an OpenAI one: it only limits the output if it reaches the engine.
    r = sup.post("/engines/v1/chat/completions",
                 {"model": "ai/tiny", "messages": [{"role": "user", "content": "Hello"}], "n_predict": 3,
                  "ignore_eos": True, "n_probs": 2, "cache_prompt": False})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 3, r.text

    r = sup.post("/engines/v1/completions", {"model": "ai/tiny", "prompt": "Hello", "n_predict": 2,
                                             "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 2, r.text


# --- errors --------------------------------------------------------------------------------------------------


def test_unknown_model_is_404(sup):
    r = sup.chat(model="ai/does-not-exist")
    err = assert_openai_error(r, 404, "not_found_error", "model_not_found")
    assert "does-not-exist" in err["message"], err
    assert sup.spawns() == []


def test_malformed_json_is_400(sup):
    r = sup.post("/engines/v1/chat/completions", data=b'{"model": "ai/tiny", "messages": [',
                 headers={"Content-Type": "application/json"})
    assert_openai_error(r, 400, "invalid_request_error")
    assert sup.spawns() == []


def test_missing_model_is_400(sup):
    r = sup.post("/engines/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(r, 400, "invalid_request_error")
    r = sup.post("/engines/v1/completions", {"prompt": "hi"})
    assert_openai_error(r, 400, "invalid_request_error")
    assert sup.spawns() == []


def test_bad_model_name_in_body_is_400(sup):
    for bad in ("../../etc/passwd", "ai/ti\u0000ny", "ai/tiny name", ""):
        r = sup.chat(model=bad)
        assert_openai_error(r, 400, "invalid_request_error")
    assert sup.spawns() == []


def test_body_over_limit_is_413(supervisors):
    sup = supervisors.start(server={"max_body_bytes": 4096})
    small = sup.chat(max_tokens=2)
    assert small.status_code == 200, small.text

    big = {"model": "ai/tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "x" * 8000}]}
    data = json.dumps(big).encode()
    # The whole request goes out in one write (it fits the socket buffer), then the answer is read: the server
    # may answer as soon as it sees the size, without reading the rest.
    status, _, body = sup.raw("POST", "/engines/v1/chat/completions", data)
    assert status == 413, body
    err = json.loads(body)["error"]
    assert err["message"], err

    # the same without Content-Length (chunked): the limit is enforced while reading
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 1000]), data[i:i + 1000]) for i in range(0, len(data), 1000))
    status, _, body = sup.raw("POST", "/engines/v1/chat/completions", chunked + b"0\r\n\r\n",
                              headers={"Transfer-Encoding": "chunked"})
    assert status == 413, body
    assert len(sup.spawns()) == 1



def test_streams_and_plain_requests_alternate_on_one_engine(sup):
    # llama-server closes its connection after every SSE response without announcing it; a proxy that pooled
    # that connection fails the next request on it (502). Several clients alternating back to back expose it.
    from concurrent.futures import ThreadPoolExecutor

    def client(n: int) -> list[str]:
        problems = []
        for i in range(25):
            s = sup.stream("/engines/v1/chat/completions",
                           {"model": "ai/tiny", "stream": True, "max_tokens": 2,
                            "messages": [{"role": "user", "content": f"{n}/{i}"}]})
            try:
                frames = s.rest()
            finally:
                s.close()
            if not frames or frames[-1] != "[DONE]":
                problems.append(f"stream {n}/{i}: {frames[-2:]}")
            r = sup.chat(max_tokens=2)
            if r.status_code != 200:
                problems.append(f"chat {n}/{i}: {r.status_code} {r.text[:200]}")
        return problems

    with ThreadPoolExecutor(8) as pool:
        problems = [p for ps in pool.map(client, range(8)) for p in ps]
    assert not problems, problems[:5]
    assert len(sup.spawns()) == 1, "one engine served them all"
