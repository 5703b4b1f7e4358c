"""Anthropic's Messages API through the official `anthropic` Python package (and raw HTTP where the SDK would hide
what is on the wire), translated to a real llama-server's OpenAI chat API.

The tiny model never stops by itself (its end tokens are zeroed), so at temperature 0 it generates exactly
`max_tokens` tokens unless a stop sequence hits: token counts are exact, not merely positive. Its text is random
bytes: llama-server holds back a token that ends inside a UTF-8 sequence and sends it with the next one, so a
stream has *at most* one text delta per token, and it drops an incomplete UTF-8 tail at the very end of a stream
(a whole answer shows it as U+FFFD). The clients never retry (`max_retries=0`).
"""

from __future__ import annotations

import base64
import json
import os
import signal

import anthropic
import pytest

from harness import engine_spy, pid_gone, wait_until

MODEL = "ai/tiny"
MSGS = [{"role": "user", "content": "Hello"}]
# Common characters: the random text hits one of them long before 200 tokens.
STOPS = [" ", "a", "e", "o", "t"]
# base URL (the SDK appends /v1/messages) -> the route it reaches
BASES = {
    "": "/v1/messages",
    "/anthropic": "/anthropic/v1/messages",
    "/engines": "/engines/v1/messages",
    "/engines/llama.cpp": "/engines/llama.cpp/v1/messages",
}
TOOLS = [{
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
# A 1x1 transparent PNG.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cfc0f01f000500"
    "0201a5d2b1b60000000049454e44ae426082")).decode()


def client(sup, base: str = "") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sup.url(base), api_key="x", max_retries=0, timeout=60.0)


def same_text(streamed: str, whole: str) -> bool:
    """A stream's text equals the whole answer's, but for an incomplete UTF-8 tail the engine drops in streams."""
    return whole.startswith(streamed) and set(whole[len(streamed):]) <= {"\ufffd"}


def text_of(msg) -> str:
    return "".join(b.text for b in msg.content if b.type == "text")


def assert_anthropic_error(r, status: int, etype: str) -> str:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert body.get("type") == "error", body
    assert isinstance(body.get("error"), dict), body
    assert body["error"].get("type") == etype, body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"].strip(), body
    return body["error"]["message"]


def sse_events(sup, path: str, body: dict) -> tuple[list[tuple[str, dict]], int]:
    """The whole SSE answer as (event name, data) pairs, pings left out; also how many pings there were.
    Every event must have an `event:` line that names its data's `type` (the SDK skips events without one)."""
    r = sup.post(path, body)
    assert r.status_code == 200, r.text[:500]
    assert r.headers.get("content-type", "").startswith("text/event-stream"), r.headers
    events, pings = [], 0
    for block in r.content.decode("utf-8").replace("\r\n", "\n").split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if not lines:
            continue
        names = [ln[len("event:"):].strip() for ln in lines if ln.startswith("event:")]
        datas = [ln[len("data:"):].strip() for ln in lines if ln.startswith("data:")]
        assert len(names) == 1 and len(datas) == 1, f"one event: and one data: line per event: {block!r}"
        data = json.loads(datas[0])
        assert data.get("type") == names[0], f"event line {names[0]!r} but data type {data.get('type')!r}"
        if names[0] == "ping":
            pings += 1
            continue
        events.append((names[0], data))
    return events, pings


# --- non-streaming -------------------------------------------------------------------------------------------


def test_message_non_stream_shape(sup):
    r = sup.post("/v1/messages", {"model": MODEL, "max_tokens": 9, "messages": MSGS})
    assert r.status_code == 200, r.text
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    m = r.json()
    assert m["id"].startswith("msg_") and len(m["id"]) > len("msg_"), m
    assert m["type"] == "message" and m["role"] == "assistant", m
    assert m["model"] == "ai/tiny:latest", m
    assert m["stop_reason"] == "max_tokens" and m["stop_sequence"] is None, m
    [block] = m["content"]
    assert block["type"] == "text" and isinstance(block["text"], str) and block["text"], m
    u = m["usage"]
    assert u["output_tokens"] == 9, u
    assert isinstance(u["input_tokens"], int) and isinstance(u["cache_read_input_tokens"], int), u
    assert u["input_tokens"] + u["cache_read_input_tokens"] > 0, u


def test_message_via_sdk_matches_openai_chat(sup):
    msg = client(sup).messages.create(model=MODEL, max_tokens=12, messages=MSGS)
    assert isinstance(msg, anthropic.types.Message), msg
    assert msg.stop_reason == "max_tokens" and msg.stop_sequence is None, msg
    assert msg.usage.output_tokens == 12, msg.usage
    # The same conversation through the OpenAI route: the same prompt, so the same greedy answer.
    oa = sup.chat(max_tokens=12).json()
    assert text_of(msg) == oa["choices"][0]["message"]["content"], (msg, oa)
    assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) == oa["usage"]["prompt_tokens"]


def test_cache_reads_are_counted_apart_from_input_tokens(sup):
    c = client(sup)
    first = c.messages.create(model=MODEL, max_tokens=3, messages=MSGS).usage
    second = c.messages.create(model=MODEL, max_tokens=3, messages=MSGS).usage
    assert (first.cache_read_input_tokens or 0) == 0, first  # a fresh engine has nothing cached
    assert second.cache_read_input_tokens and second.cache_read_input_tokens > 0, second  # the same prompt again
    assert first.input_tokens == second.input_tokens + second.cache_read_input_tokens, (first, second)


def test_all_routes_and_one_runner(sup):
    texts = set()
    for base, route in BASES.items():
        c = client(sup, base)
        msg = c.messages.create(model=MODEL, max_tokens=4, messages=MSGS)
        assert msg.usage.output_tokens == 4 and msg.stop_reason == "max_tokens", (route, msg)
        texts.add(text_of(msg))
        n = c.messages.count_tokens(model=MODEL, messages=MSGS).input_tokens
        assert n == msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0), (route, n, msg.usage)
    assert len(texts) == 1, texts
    assert len(sup.spawns()) == 1, "every route is served by the one completion runner"


def test_model_name_is_normalised(sup):
    msg = client(sup).messages.create(model="tiny", max_tokens=2, messages=MSGS)
    assert msg.model == "ai/tiny:latest", msg


def test_stop_sequences(sup):
    c = client(sup)
    msg = c.messages.create(model=MODEL, max_tokens=200, messages=MSGS, stop_sequences=STOPS)
    assert msg.stop_reason == "stop_sequence", msg
    assert msg.stop_sequence in STOPS, msg
    assert 1 <= msg.usage.output_tokens < 200, msg.usage
    text = text_of(msg)
    assert not any(s in text for s in STOPS), text
    # The stop sequence it reports is the one that really came next.
    full = text_of(c.messages.create(model=MODEL, max_tokens=msg.usage.output_tokens + 5, messages=MSGS))
    assert full.startswith(text + msg.stop_sequence), (full, text, msg.stop_sequence)


def test_multi_character_stop_sequence(sup):
    # Two printable characters that the greedy answer is known to contain (found from the answer itself), among
    # decoys that never occur: the one that hit is reported, and the text ends right before it.
    c = client(sup)
    full = text_of(c.messages.create(model=MODEL, max_tokens=120, messages=MSGS))
    pairs = [full[i:i + 2] for i in range(1, len(full) - 1)
             if all(ch.isascii() and ch.isprintable() for ch in full[i:i + 2])]
    assert pairs, f"no two printable ASCII characters in a row in {full!r}"
    stop = pairs[0]
    decoys = ["\u00a7\u00a7never", "zzzzzz"]
    msg = c.messages.create(model=MODEL, max_tokens=120, messages=MSGS, stop_sequences=decoys + [stop])
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == stop, (msg, stop)
    assert text_of(msg) == full[:full.index(stop)], (msg, full, stop)
    assert msg.usage.output_tokens < 120, msg.usage

    events, _ = sse_events(sup, "/v1/messages", {"model": MODEL, "max_tokens": 120, "messages": MSGS,
                                                 "stream": True, "stop_sequences": decoys + [stop]})
    md = events[-2][1]
    assert md["type"] == "message_delta" and md["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": stop}, md
    streamed = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert same_text(streamed, text_of(msg)), (streamed, msg)


# --- count_tokens --------------------------------------------------------------------------------------------


def test_count_tokens(sup):
    c = client(sup)
    base = c.messages.count_tokens(model=MODEL, messages=MSGS)
    assert base.input_tokens > 0, base
    r = sup.post("/v1/messages/count_tokens", {"model": MODEL, "messages": MSGS})
    assert r.status_code == 200 and r.json() == {"input_tokens": base.input_tokens}, r.text

    longer = c.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Hello " * 20}])
    assert longer.input_tokens > base.input_tokens, (base, longer)

    with_system = c.messages.count_tokens(model=MODEL, messages=MSGS, system="You are a terse assistant.")
    assert with_system.input_tokens > base.input_tokens, (base, with_system)
    as_blocks = c.messages.count_tokens(model=MODEL, messages=MSGS,
                                        system=[{"type": "text", "text": "You are a terse assistant."}])
    assert as_blocks.input_tokens == with_system.input_tokens

    # What the generation reports as its prompt is what count_tokens counted.
    for kw in ({}, {"system": "You are a terse assistant."}):
        msg = c.messages.create(model=MODEL, max_tokens=2, messages=MSGS, **kw)
        counted = c.messages.count_tokens(model=MODEL, messages=MSGS, **kw).input_tokens
        assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) == counted, (kw, msg.usage)


def test_count_tokens_with_tools_and_history(sup):
    c = client(sup)
    plain = c.messages.count_tokens(model=MODEL, messages=MSGS).input_tokens
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 21 C"}]},
    ]
    counted = c.messages.count_tokens(model=MODEL, messages=history, tools=TOOLS).input_tokens
    assert counted > plain, (plain, counted)
    msg = c.messages.create(model=MODEL, max_tokens=2, messages=history, tools=TOOLS)
    assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) == counted, msg.usage


# --- streaming -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/messages", "/anthropic/v1/messages"])
def test_raw_stream_event_order(sup, route):
    events, _pings = sse_events(sup, route, {"model": MODEL, "max_tokens": 8, "messages": MSGS, "stream": True})
    names = [n for n, _ in events]
    k = names.count("content_block_delta")
    assert names == (["message_start", "content_block_start"] + ["content_block_delta"] * k
                     + ["content_block_stop", "message_delta", "message_stop"]), names
    # One delta per token, but a token ending inside a UTF-8 sequence goes out with the next one.
    assert 1 <= k <= 8, names

    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["type"] == "message" and start["role"] == "assistant", start
    assert start["model"] == "ai/tiny:latest" and start["content"] == [], start
    assert start["stop_reason"] is None and start["stop_sequence"] is None, start
    assert "input_tokens" in start["usage"] and "output_tokens" in start["usage"], start

    block_start = events[1][1]
    assert block_start["index"] == 0 and block_start["content_block"] == {"type": "text", "text": ""}, block_start
    deltas = [d for n, d in events if n == "content_block_delta"]
    assert all(d["index"] == 0 and d["delta"]["type"] == "text_delta" for d in deltas), deltas
    assert all(d["delta"]["text"] for d in deltas), deltas
    assert events[-3][1]["index"] == 0, events[-3]

    md = events[-2][1]
    assert md["delta"]["stop_reason"] == "max_tokens" and md["delta"]["stop_sequence"] is None, md
    assert md["usage"]["output_tokens"] == 8, md
    counted = sup.post(route + "/count_tokens", {"model": MODEL, "messages": MSGS}).json()["input_tokens"]
    assert md["usage"]["input_tokens"] + md["usage"]["cache_read_input_tokens"] == counted, (md, counted)

    # The streamed text is the non-streaming answer.
    whole = sup.post(route, {"model": MODEL, "max_tokens": 8, "messages": MSGS}).json()
    streamed = "".join(d["delta"]["text"] for d in deltas)
    assert same_text(streamed, whole["content"][0]["text"]), (streamed, whole)


def test_raw_stream_with_stop_sequences(sup):
    events, _ = sse_events(sup, "/v1/messages", {"model": MODEL, "max_tokens": 200, "messages": MSGS,
                                                 "stream": True, "stop_sequences": STOPS})
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "content_block_start"], names
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"], names
    md = events[-2][1]
    assert md["delta"]["stop_reason"] == "stop_sequence", md
    assert md["delta"]["stop_sequence"] in STOPS, md
    assert 1 <= md["usage"]["output_tokens"] < 200, md
    whole = client(sup).messages.create(model=MODEL, max_tokens=200, messages=MSGS, stop_sequences=STOPS)
    assert md["delta"]["stop_sequence"] == whole.stop_sequence, (md, whole)
    assert md["usage"]["output_tokens"] == whole.usage.output_tokens, (md, whole.usage)
    streamed = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert same_text(streamed, text_of(whole)), (streamed, whole)


def test_sdk_stream_helper(sup):
    c = client(sup)
    with c.messages.stream(model=MODEL, max_tokens=10, messages=MSGS) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert 1 <= len(pieces) <= 10, pieces
    assert text_of(final) == "".join(pieces), (final, pieces)
    assert final.stop_reason == "max_tokens", final
    assert final.usage.output_tokens == 10, final.usage
    # The input side reaches the final message too (from message_delta's usage).
    counted = c.messages.count_tokens(model=MODEL, messages=MSGS).input_tokens
    assert final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) == counted, final.usage
    whole = c.messages.create(model=MODEL, max_tokens=10, messages=MSGS)
    assert same_text(text_of(final), text_of(whole)), (final, whole)


def test_sdk_raw_stream_events(sup):
    # stream=True on create: the SDK yields the typed events (it skips pings, and any event without an
    # `event:` line).
    events = list(client(sup, "/anthropic").messages.create(model=MODEL, max_tokens=6, messages=MSGS, stream=True))
    types = [e.type for e in events]
    k = types.count("content_block_delta")
    assert 1 <= k <= 6 and types == (["message_start", "content_block_start"] + ["content_block_delta"] * k
                                     + ["content_block_stop", "message_delta", "message_stop"]), types
    assert events[-2].delta.stop_reason == "max_tokens" and events[-2].usage.output_tokens == 6, events[-2]


# --- request forms ---------------------------------------------------------------------------------------------


def test_system_and_content_forms(sup):
    c = client(sup)
    a = c.messages.create(model=MODEL, max_tokens=6, system="Be brief.", messages=MSGS)
    b = c.messages.create(model=MODEL, max_tokens=6, system=[{"type": "text", "text": "Be brief."}],
                          messages=[{"role": "user", "content": [{"type": "text", "text": "Hello"}]}])
    assert text_of(a) == text_of(b), (a, b)
    assert (a.usage.input_tokens + (a.usage.cache_read_input_tokens or 0)
            == b.usage.input_tokens + (b.usage.cache_read_input_tokens or 0)), (a.usage, b.usage)
    no_system = c.messages.create(model=MODEL, max_tokens=6, messages=MSGS)
    assert (a.usage.input_tokens + (a.usage.cache_read_input_tokens or 0)
            > no_system.usage.input_tokens + (no_system.usage.cache_read_input_tokens or 0)), (a.usage, no_system)

    # Several system blocks, several content blocks, a multi-turn history with an assistant turn.
    m = c.messages.create(model=MODEL, max_tokens=4,
                          system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
                          messages=[{"role": "user", "content": [{"type": "text", "text": "Hello"},
                                                                 {"type": "text", "text": "there"}]},
                                    {"role": "assistant", "content": "Hi."},
                                    {"role": "user", "content": "How are you?"}])
    assert m.usage.output_tokens == 4 and m.stop_reason == "max_tokens", m


def test_empty_system_is_no_system(sup):
    c = client(sup)
    none = c.messages.count_tokens(model=MODEL, messages=MSGS).input_tokens
    assert c.messages.count_tokens(model=MODEL, messages=MSGS, system=[]).input_tokens == none
    assert c.messages.count_tokens(model=MODEL, messages=MSGS, system="").input_tokens == none


def test_empty_user_content_is_400(sup):
    r = sup.post("/v1/messages", {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": []}]})
    assert_anthropic_error(r, 400, "invalid_request_error")


# What each Anthropic tool_choice must become in the OpenAI request the engine receives: `any` and `tool` tell the
# engine that it must call a tool ("required", or the one named function).
TOOL_CHOICES = [
    (None, None),
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ({"type": "none"}, "none"),
]


@pytest.mark.parametrize("tool_choice,engine_choice", TOOL_CHOICES, ids=["default", "auto", "any", "tool", "none"])
def test_tools_are_accepted(supervisors, tmp_path, tool_choice, engine_choice):
    spy = engine_spy(supervisors.prereqs, tmp_path / "spy")
    sup = supervisors.start(engine_binary=str(spy.binary), env=spy.env)
    kw = {"tools": TOOLS}
    if tool_choice is not None:
        kw["tool_choice"] = tool_choice
    msg = client(sup).messages.create(model=MODEL, max_tokens=5,
                                      messages=[{"role": "user", "content": "Weather in Paris?"}], **kw)
    # The tiny model's ChatML template does not render tools, so the random model writes 5 tokens of text; what
    # shows that the tools were not dropped is the request the engine received.
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 5, msg
    assert [b.type for b in msg.content] == ["text"], msg
    [sent] = spy.bodies()
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": TOOLS[0]["description"], "parameters": TOOLS[0]["input_schema"]}}], sent
    assert sent.get("tool_choice") == engine_choice, sent


def test_tool_use_history_is_accepted(sup):
    c = client(sup)
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "sunny, 21 C"}]},
                                     {"type": "text", "text": "And tomorrow?"}]},
    ]
    msg = c.messages.create(model=MODEL, max_tokens=5, tools=TOOLS, messages=history)
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 5, msg
    err = c.messages.create(model=MODEL, max_tokens=5, tools=TOOLS, messages=history[:2] + [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such city",
                                      "is_error": True}]}])
    assert err.usage.output_tokens == 5, err
    # The tool result reaches the prompt: a longer result is a longer prompt.
    short = c.messages.count_tokens(model=MODEL, tools=TOOLS, messages=history).input_tokens
    long_history = history[:2] + [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 21 C " * 10},
        {"type": "text", "text": "And tomorrow?"}]}]
    longer = c.messages.count_tokens(model=MODEL, tools=TOOLS, messages=long_history).input_tokens
    assert longer > short, (short, longer)


def test_sampling_and_metadata_fields_are_accepted(sup):
    # This SDK version has no temperature/top_p/top_k arguments any more; the API still takes them.
    c = client(sup)
    base = c.messages.create(model=MODEL, max_tokens=16, messages=MSGS)
    msg = c.messages.create(model=MODEL, max_tokens=16, messages=MSGS, metadata={"user_id": "u"},
                            extra_body={"temperature": 0, "top_p": 0.9, "top_k": 1})
    assert msg.usage.output_tokens == 16, msg
    assert text_of(msg) == text_of(base), "greedy either way"
    # The temperature reaches the engine (whose own default here is --temp 0): hot sampling changes the answer.
    hot = [text_of(c.messages.create(model=MODEL, max_tokens=16, messages=MSGS,
                                     extra_body={"temperature": 1.0, "top_k": 0, "top_p": 1.0}))
           for _ in range(3)]
    assert any(h != text_of(base) for h in hot), hot
    # Raw, as a client that is not this SDK sends them.
    r = sup.post("/v1/messages", {"model": MODEL, "max_tokens": 3, "messages": MSGS, "temperature": 0.5,
                                  "top_p": 0.5, "top_k": 5, "metadata": {"user_id": "u"}})
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 3, r.text


# --- errors --------------------------------------------------------------------------------------------------


def test_unknown_model_is_404(sup):
    for base in BASES:
        with pytest.raises(anthropic.NotFoundError) as e:
            client(sup, base).messages.create(model="ai/does-not-exist", max_tokens=4, messages=MSGS)
        assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error", e.value.body
        assert "does-not-exist" in e.value.body["error"]["message"], e.value.body
    with pytest.raises(anthropic.NotFoundError):
        client(sup).messages.create(model="ai/does-not-exist", max_tokens=4, messages=MSGS, stream=True)
    # The raw shape, on the route OpenAI's dialect also uses (/v1/...): Anthropic's, not OpenAI's.
    r = sup.post("/v1/messages", {"model": "ai/does-not-exist", "max_tokens": 4, "messages": MSGS})
    assert_anthropic_error(r, 404, "not_found_error")
    assert sup.spawns() == []


def test_count_tokens_unknown_model_is_404(sup):
    with pytest.raises(anthropic.NotFoundError) as e:
        client(sup).messages.count_tokens(model="ai/does-not-exist", messages=MSGS)
    assert e.value.body["error"]["type"] == "not_found_error", e.value.body
    r = sup.post("/anthropic/v1/messages/count_tokens", {"model": "ai/does-not-exist", "messages": MSGS})
    assert_anthropic_error(r, 404, "not_found_error")
    assert sup.spawns() == []


def test_missing_max_tokens_is_400(sup):
    r = sup.post("/v1/messages", {"model": MODEL, "messages": MSGS})
    msg = assert_anthropic_error(r, 400, "invalid_request_error")
    assert "max_tokens" in msg, msg
    assert sup.spawns() == [], "rejected before any engine starts"


def test_malformed_requests_are_400(sup):
    r = sup.post("/v1/messages", data=b'{"model": "ai/tiny", "messages": [', headers={"Content-Type": "application/json"})
    assert_anthropic_error(r, 400, "invalid_request_error")
    r = sup.post("/anthropic/v1/messages/count_tokens", data=b'{"model": ',
                 headers={"Content-Type": "application/json"})
    assert_anthropic_error(r, 400, "invalid_request_error")
    for bad in ({"max_tokens": 4, "messages": MSGS},  # no model
                {"model": MODEL, "max_tokens": 4, "messages": "Hello"},  # messages not a list
                {"model": MODEL, "max_tokens": 4, "messages": [{"role": "system", "content": "x"}]},  # bad role
                {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "bogus"}]}]}):
        r = sup.post("/v1/messages", bad)
        assert_anthropic_error(r, 400, "invalid_request_error")
    for bad in ({"messages": MSGS}, {"model": MODEL, "messages": "Hello"}):
        r = sup.post("/v1/messages/count_tokens", bad)
        assert_anthropic_error(r, 400, "invalid_request_error")
    r = sup.post("/v1/messages", {"model": MODEL, "max_tokens": 0, "messages": MSGS})
    assert "max_tokens" in assert_anthropic_error(r, 400, "invalid_request_error")
    with pytest.raises(anthropic.BadRequestError) as e:
        client(sup).messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": 42}])
    assert e.value.body["error"]["type"] == "invalid_request_error", e.value.body
    assert sup.spawns() == []


def test_image_to_a_text_only_model_is_400(sup):
    with pytest.raises(anthropic.BadRequestError) as e:
        client(sup).messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}])
    assert e.value.status_code == 400
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error", e.value.body
    assert "image" in e.value.body["error"]["message"], e.value.body
    # The engine that rejected it still serves.
    assert client(sup).messages.create(model=MODEL, max_tokens=2, messages=MSGS).usage.output_tokens == 2


def test_body_over_limit_is_413(supervisors):
    sup = supervisors.start(server={"max_body_bytes": 4096})
    c = client(sup)
    assert c.messages.create(model=MODEL, max_tokens=2, messages=MSGS).usage.output_tokens == 2
    big = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "x" * 8000}]}
    status, _, body = sup.raw("POST", "/v1/messages", json.dumps(big).encode())
    assert status == 413, body
    body = json.loads(body)
    assert body["type"] == "error" and body["error"]["type"] == "request_too_large", body
    assert body["error"]["message"], body
    status, _, body = sup.raw("POST", "/anthropic/v1/messages/count_tokens", json.dumps(big).encode())
    assert status == 413 and json.loads(body)["error"]["type"] == "request_too_large", body
    with pytest.raises(anthropic.APIStatusError) as e:
        c.messages.create(**big)
    assert e.value.status_code == 413, e.value
    assert len(sup.spawns()) == 1


def test_engine_killed_mid_stream_ends_with_an_error_event(supervisors):
    # At --ctx-size 8192 the tiny model streams 4000 tokens in seconds, and the first delta comes within
    # milliseconds: an engine killed right after it is killed mid-generation (see test_engine_failure.py).
    sup = supervisors.start(models=[supervisors.tiny_model(context_size=8192)])
    s = sup.stream("/v1/messages", {"model": MODEL, "max_tokens": 4000, "messages": MSGS, "stream": True}, timeout=30)
    try:
        assert s.status == 200
        seen = []
        while not seen or seen[-1]["type"] != "content_block_delta":
            d = s.next_data()
            assert d is not None, f"the stream ended before the first delta: {seen}"
            seen.append(json.loads(d))
        [spawn] = sup.spawns()
        os.kill(spawn.pid, signal.SIGKILL)
        rest = [json.loads(d) for d in s.rest()]
    finally:
        s.close()
    types = [e["type"] for e in seen + rest]
    assert types[0] == "message_start", types[:3]
    assert "message_stop" not in types and "message_delta" not in types, types[-5:]
    last = rest[-1] if rest else None
    assert last and last["type"] == "error", f"the stream must end with an error event: {types[-5:]}"
    assert last["error"]["type"] == "api_error" and last["error"]["message"], last
    assert types.count("error") == 1, types[-5:]

    # The next request gets a new engine.
    wait_until(lambda: pid_gone(spawn.pid), 5.0, f"killed engine pid {spawn.pid} to be reaped")
    msg = client(sup).messages.create(model=MODEL, max_tokens=2, messages=MSGS)
    assert msg.usage.output_tokens == 2, msg
    assert len(sup.spawns()) == 2
