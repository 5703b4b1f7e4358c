"""GET /engines/requests, the request inspector: every inference exchange per model, in each dialect, with the
prompt, the answer (streams reassembled), token counts, speed and context use; bounded per model and per body."""

from __future__ import annotations

import json

from harness import wait_until

MSG = [{"role": "user", "content": "hi there"}]


def latest(sup, at_least: int = 0, **params) -> list[dict]:
    """The inspector's records, once it holds `at_least` (recording finishes just after the answer)."""
    def get():
        r = sup.get("/engines/requests", params=params)
        assert r.status_code == 200, r.text
        return r.json()
    if not at_least:
        return get()
    return wait_until(lambda: (recs := get()) and len(recs) >= at_least and recs, 5, f"{at_least} records")


def test_a_plain_chat_is_recorded_with_its_numbers(sup):
    body = {"model": "ai/tiny", "messages": MSG, "max_tokens": 5}
    r = sup.post("/engines/v1/chat/completions", body)
    assert r.status_code == 200
    [rec] = latest(sup, 1)
    assert (rec["model"], rec["dialect"], rec["route"], rec["status"]) == \
        ("ai/tiny:latest", "openai", "/v1/chat/completions", 200)
    assert rec["prompt"] == "hi there" and rec["answer"] == r.json()["choices"][0]["message"]["content"]
    assert rec["completion_tokens"] == 5 and rec["prompt_tokens"] == r.json()["usage"]["prompt_tokens"]
    assert rec["tokens_per_second"] > 0 and rec["duration_ms"] > 0
    assert rec["context_size"] == 512 and 0 < rec["context_used_percent"] < 100
    assert rec["request"] == body and rec["response"]["choices"], rec
    assert rec["complete"] and not rec["streamed"] and not rec["truncated"]


def test_streams_are_reassembled_in_each_dialect(sup):
    stream = sup.stream("/engines/v1/chat/completions",
                        {"model": "ai/tiny", "messages": MSG, "max_tokens": 6, "stream": True,
                         "stream_options": {"include_usage": True}})
    text = ""
    for data in stream.rest():
        if data != "[DONE]":
            chunk = json.loads(data)
            if chunk["choices"]:
                text += chunk["choices"][0]["delta"].get("content") or ""
    [rec] = latest(sup, 1)
    assert rec["streamed"] and rec["answer"] == text and rec["completion_tokens"] == 6, rec
    assert isinstance(rec["response"], str) and rec["response"].startswith("data: ")

    r = sup.post("/v1/messages", {"model": "ai/tiny", "max_tokens": 4, "messages": MSG, "stream": True})
    assert r.status_code == 200
    r = sup.post("/api/chat", {"model": "ai/tiny", "messages": MSG, "options": {"num_predict": 3}})
    assert r.status_code == 200
    recs = latest(sup, 3)
    assert [x["dialect"] for x in recs[:2]] == ["ollama", "anthropic"], recs[:2]
    ollama_text = "".join(json.loads(line)["message"]["content"] for line in r.text.splitlines())
    assert recs[0]["answer"] == ollama_text and recs[0]["completion_tokens"] == 3
    assert recs[1]["completion_tokens"] == 4 and recs[1]["prompt_tokens"] > 0


def test_streams_without_usage_count_tokens_from_the_engines_timings(sup):
    """Open WebUI streams without `stream_options.include_usage`: no `usage` chunk, but llama-server's last chunk
    carries `timings`, whose counts the inspector shows (the prompt cached from the first request included)."""
    plain = sup.post("/engines/v1/chat/completions", {"model": "ai/tiny", "messages": MSG, "max_tokens": 2})
    assert plain.status_code == 200
    prompt_tokens = plain.json()["usage"]["prompt_tokens"]
    stream = sup.stream("/v1/chat/completions",
                        {"model": "ai/tiny", "messages": MSG, "max_tokens": 6, "stream": True})
    chunks = [json.loads(d) for d in stream.rest() if d != "[DONE]"]
    assert not any(c.get("usage") for c in chunks), "the engine sent usage unasked: this test proves nothing"
    [rec, _] = latest(sup, 2)
    assert rec["streamed"] and rec["route"] == "/v1/chat/completions", rec
    assert rec["completion_tokens"] == 6 and rec["prompt_tokens"] == prompt_tokens, rec
    assert rec["tokens_per_second"] > 0 and rec["context_used_percent"] > 0, rec


def test_memory_is_bounded_per_model_and_per_body(sup):
    for i in range(53):
        assert sup.chat(max_tokens=1).status_code == 200
    recs = wait_until(lambda: (r := latest(sup, model="ai/tiny")) and r[0]["id"] == 53 and r, 5, "53 records")
    assert len(recs) == 50 and recs[-1]["id"] == 4
    assert latest(sup, model="ai/other") == []
    big = {"model": "ai/tiny", "messages": [{"role": "user", "content": "x " * 40000}], "max_tokens": 1}
    r = sup.post("/engines/v1/chat/completions", big)
    assert r.status_code == 400  # longer than the context
    rec = wait_until(lambda: (r := latest(sup)) and r[0]["id"] == 54 and r[0], 5, "the big request's record")
    assert rec["status"] == 400 and rec["truncated"] and len(rec["request"]) == 64 * 1024, \
        (rec["status"], rec["truncated"], len(rec["request"]))
