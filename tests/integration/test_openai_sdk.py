"""The OpenAI routes through the official `openai` Python package, against a real llama-server.

The tiny model never stops by itself (its end tokens are zeroed), so at temperature 0 it generates exactly
`max_tokens` tokens unless a stop sequence hits: token counts are exact, not merely positive. Its text is random
bytes, so a stream may merge two tokens into one delta (an incomplete UTF-8 sequence is held back by the engine).
The clients never retry (`max_retries=0`), so a flaky answer fails the test instead of being hidden.
"""

from __future__ import annotations

import openai
import pytest

MSGS = [{"role": "user", "content": "Hello"}]
# Common characters: the random text hits one of them long before 200 tokens.
STOPS = [" ", "a", "e", "o", "t"]


def client(sup, prefix: str = "/engines/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=sup.url(prefix), api_key="x", max_retries=0, timeout=60.0)


def same_text(streamed: str, whole: str) -> bool:
    """A stream carries the non-streaming text, except that llama-server drops (instead of replacing with U+FFFD)
    an incomplete UTF-8 sequence left at the very end of a stream (seen on the engine directly, not a proxy
    effect)."""
    return whole.startswith(streamed) and set(whole[len(streamed):]) <= {"\ufffd"}


def embedding_length(sup) -> int:
    r = sup.get("/models/ai/tiny")
    assert r.status_code == 200, r.text
    gguf = r.json()["config"]["gguf"]
    return int(gguf[f"{gguf['general.architecture']}.embedding_length"])


# --- chat --------------------------------------------------------------------------------------------------


def test_chat_non_stream_generates_exactly_max_tokens(sup):
    r = client(sup).chat.completions.create(model="ai/tiny", messages=MSGS, max_tokens=9)
    assert r.object == "chat.completion", r
    assert r.model == "ai/tiny:latest", r
    [choice] = r.choices
    assert choice.finish_reason == "length", r
    assert choice.message.role == "assistant", r
    assert isinstance(choice.message.content, str) and choice.message.content, r
    assert r.usage.completion_tokens == 9, r.usage
    assert r.usage.prompt_tokens > 0, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage


def test_chat_stream_with_usage(sup):
    c = client(sup)
    chunks = list(c.chat.completions.create(model="ai/tiny", messages=MSGS, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks), chunks
    assert len({ch.id for ch in chunks}) == 1, "one id for the whole stream"
    with_choices = [ch for ch in chunks if ch.choices]
    deltas = [ch.choices[0].delta.content for ch in with_choices if ch.choices[0].delta.content]
    # One delta per token, except that tokens ending inside a UTF-8 sequence are merged with the next.
    assert 1 <= len(deltas) <= 8, deltas
    assert with_choices[0].choices[0].delta.role == "assistant", with_choices[0]
    assert with_choices[-1].choices[0].finish_reason == "length", with_choices[-1]
    assert all(ch.choices[0].finish_reason is None for ch in with_choices[:-1]), with_choices

    # include_usage: one final chunk with no choices and the totals; no other chunk has usage.
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, last
    assert last.usage.completion_tokens == 8, last.usage
    assert last.usage.prompt_tokens > 0, last.usage
    assert all(ch.usage is None for ch in chunks[:-1]), chunks

    # The same text as the non-streaming answer (deterministic at temperature 0).
    whole = c.chat.completions.create(model="ai/tiny", messages=MSGS, max_tokens=8)
    assert same_text("".join(deltas), whole.choices[0].message.content), (deltas, whole)


def test_chat_stream_without_include_usage_has_no_usage_chunk(sup):
    chunks = list(client(sup).chat.completions.create(model="ai/tiny", messages=MSGS, max_tokens=4, stream=True))
    assert chunks and all(ch.choices for ch in chunks), chunks
    assert all(ch.usage is None for ch in chunks), chunks
    assert chunks[-1].choices[0].finish_reason == "length", chunks[-1]


def test_stop_sequences_end_generation_early(sup):
    c = client(sup)
    r = c.chat.completions.create(model="ai/tiny", messages=MSGS, max_tokens=200, stop=STOPS)
    [choice] = r.choices
    assert choice.finish_reason == "stop", r
    assert 1 <= r.usage.completion_tokens < 200, r.usage
    # The stop string is not part of the answer, and nothing before it is one either.
    assert not any(s in choice.message.content for s in STOPS), choice.message.content

    # Without the stop sequences the same prompt runs to the limit, and starts with the same text.
    full = c.chat.completions.create(model="ai/tiny", messages=MSGS, max_tokens=r.usage.completion_tokens + 5)
    assert full.choices[0].finish_reason == "length", full
    assert full.choices[0].message.content.startswith(choice.message.content), (full, r)
    hit = full.choices[0].message.content[len(choice.message.content):]
    assert any(hit.startswith(s) for s in STOPS), hit

    # Streaming stops at the same place.
    chunks = list(c.chat.completions.create(model="ai/tiny", messages=MSGS, max_tokens=200, stop=STOPS,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert same_text(text, choice.message.content), (text, choice.message.content)
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop", chunks[-2:]
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens, chunks[-1]


def test_a_single_stop_string_as_str(sup):
    # `stop` may be one string instead of a list.
    c = client(sup)
    full = c.chat.completions.create(model="ai/tiny", messages=MSGS, max_tokens=24).choices[0].message.content
    # A printable character early in the answer (deterministic at temperature 0); the replacement characters
    # that stand for the random bytes are not in the engine's own text, so they would not match.
    stop = next(ch for ch in full[1:8] if ch.isascii() and ch.isprintable())
    r = c.chat.completions.create(model="ai/tiny", messages=MSGS, max_tokens=24, stop=stop)
    assert r.choices[0].finish_reason == "stop", r
    assert r.choices[0].message.content == full[:full.index(stop)], (full, r)
    assert r.usage.completion_tokens < 24, r.usage


# --- legacy completions ------------------------------------------------------------------------------------


def test_legacy_completions(sup):
    c = client(sup)
    r = c.completions.create(model="ai/tiny", prompt="Once upon a time", max_tokens=7)
    assert r.object == "text_completion", r
    [choice] = r.choices
    assert choice.finish_reason == "length", r
    assert isinstance(choice.text, str) and choice.text, r
    assert r.usage.completion_tokens == 7, r.usage
    assert r.usage.prompt_tokens > 0, r.usage

    chunks = list(c.completions.create(model="ai/tiny", prompt="Once upon a time", max_tokens=7, stream=True,
                                       stream_options={"include_usage": True}))
    streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert streamed and same_text(streamed, choice.text), (streamed, choice.text)
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length", chunks[-2:]
    usages = [ch.usage for ch in chunks if ch.usage is not None]
    assert usages and usages[-1].completion_tokens == 7, chunks[-2:]


def test_legacy_completions_with_stop(sup):
    r = client(sup).completions.create(model="ai/tiny", prompt="Once upon a time", max_tokens=200, stop=STOPS)
    assert r.choices[0].finish_reason == "stop", r
    assert 1 <= r.usage.completion_tokens < 200, r.usage
    assert not any(s in r.choices[0].text for s in STOPS), r.choices[0].text


# --- models --------------------------------------------------------------------------------------------------


def test_models_list_and_retrieve(sup):
    c = client(sup)
    models = c.models.list()
    assert [m.id for m in models.data] == ["ai/tiny:latest"], models
    [m] = models.data
    assert m.object == "model" and m.owned_by == "docker" and m.created > 0, m
    # The SDK percent-encodes the slash: /engines/v1/models/ai%2Ftiny:latest
    got = c.models.retrieve("ai/tiny:latest")
    assert got.id == "ai/tiny:latest" and got.object == "model" and got.created == m.created, got
    assert c.models.retrieve("ai/tiny").id == "ai/tiny:latest"
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("ai/does-not-exist")
    assert e.value.status_code == 404
    assert sup.spawns() == [], "listing models starts no engine"


def test_v1_base_url(sup):
    c = client(sup, "/v1")
    assert [m.id for m in c.models.list().data] == ["ai/tiny:latest"]
    r = c.chat.completions.create(model="ai/tiny", messages=MSGS, max_tokens=3)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length", r
    # The same runner serves /engines/v1 and /engines/llama.cpp/v1.
    for prefix in ("/engines/v1", "/engines/llama.cpp/v1"):
        again = client(sup, prefix).chat.completions.create(model="ai/tiny", messages=MSGS, max_tokens=3)
        assert again.choices[0].message.content == r.choices[0].message.content
    assert len(sup.spawns()) == 1


# --- embeddings ----------------------------------------------------------------------------------------------


def test_embeddings(sup):
    n = embedding_length(sup)
    assert n == 64  # what scripts/make-tiny-gguf.py writes
    c = client(sup)
    # The SDK asks for base64 by default and decodes it.
    e = c.embeddings.create(model="ai/tiny", input="hello world")
    assert e.object == "list" and len(e.data) == 1, e
    vec = e.data[0].embedding
    assert len(vec) == n and all(isinstance(x, float) for x in vec), vec[:4]
    assert any(x != 0.0 for x in vec)
    assert e.usage.prompt_tokens > 0, e.usage

    f = c.embeddings.create(model="ai/tiny", input=["hello world", "something else"], encoding_format="float")
    assert [d.index for d in f.data] == [0, 1], f
    assert all(len(d.embedding) == n for d in f.data)
    assert f.data[0].embedding == pytest.approx(vec, rel=1e-5, abs=1e-6), "same input, same vector"
    assert f.data[1].embedding != pytest.approx(vec, rel=1e-3, abs=1e-4), "different input, different vector"

    [spawn] = sup.spawns()
    assert "--embeddings" in spawn.argv, spawn.argv


# --- errors --------------------------------------------------------------------------------------------------


def test_unknown_model_raises_not_found(sup):
    c = client(sup)
    calls = [
        lambda: c.chat.completions.create(model="ai/does-not-exist", messages=MSGS, max_tokens=2),
        lambda: c.chat.completions.create(model="ai/does-not-exist", messages=MSGS, max_tokens=2, stream=True),
        lambda: c.completions.create(model="ai/does-not-exist", prompt="hi", max_tokens=2),
        lambda: c.embeddings.create(model="ai/does-not-exist", input="hi"),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.status_code == 404
        assert e.value.code == "model_not_found", e.value.body
        assert e.value.type == "not_found_error", e.value.body
        assert "does-not-exist" in e.value.message
    assert sup.spawns() == []


def test_malformed_input_raises_bad_request(sup):
    c = client(sup)
    # Raw bodies through the SDK's own request path (so the SDK parses the error envelope).
    with pytest.raises(openai.BadRequestError) as e:
        c.post("/chat/completions", cast_to=object, content=b'{"model": "ai/tiny", "messages": [')
    assert e.value.type == "invalid_request_error", e.value.body
    assert "JSON" in e.value.message, e.value.message

    with pytest.raises(openai.BadRequestError) as e:
        c.post("/chat/completions", cast_to=object, body={"messages": MSGS})
    assert e.value.type == "invalid_request_error" and "model" in e.value.message, e.value.body

    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="../../etc/passwd", messages=MSGS)
    assert e.value.type == "invalid_request_error", e.value.body
    assert sup.spawns() == [], "rejected before any engine starts"

    # A body the proxy forwards but the engine rejects keeps the engine's 400.
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="ai/tiny", messages="not a list")  # type: ignore[arg-type]
    assert e.value.status_code == 400 and e.value.message, e.value.body


def test_body_over_limit_raises_413(supervisors):
    sup = supervisors.start(server={"max_body_bytes": 4096})
    c = client(sup)
    assert c.chat.completions.create(model="ai/tiny", messages=MSGS, max_tokens=2).usage.completion_tokens == 2
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="ai/tiny", max_tokens=2, messages=[{"role": "user", "content": "x" * 8000}])
    assert e.value.status_code == 413, e.value
    assert isinstance(e.value.body, dict) and e.value.message, e.value.body
    assert len(sup.spawns()) == 1
