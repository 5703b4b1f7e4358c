"""OpenAI's Responses API through the official `openai` Python package (and raw HTTP where the SDK would hide what
is on the wire), translated to a real llama-server's chat completions.

Two models: the tiny random-weight one (`ai/tiny`), which never stops by itself (its end tokens are zeroed), so at
temperature 0 it generates exactly `max_output_tokens` tokens and token counts are exact; and SmolLM2-135M-Instruct
(`ai/smollm2`), which stops by itself and writes text a JSON schema can constrain. The clients never retry
(`max_retries=0`).
"""

from __future__ import annotations

import json
import os
import signal

import jsonschema
import openai
import pydantic
import pytest

from harness import engine_spy, pid_gone, wait_until

TINY = "ai/tiny"
SMOL = "ai/smollm2"
# base URL (the SDK appends /responses) -> the route it reaches
BASES = {
    "": "/responses",
    "/v1": "/v1/responses",
    "/engines/v1": "/engines/v1/responses",
    "/engines/llama.cpp/v1": "/engines/llama.cpp/v1/responses",
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False},
    "strict": True,
}


def client(sup, base: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=sup.url(base), api_key="x", max_retries=0, timeout=60.0)


@pytest.fixture
def smol(supervisors):
    return supervisors.start(models=[supervisors.smollm2_model()])


def assert_openai_error(r, status: int, etype: str) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    err = r.json()["error"]
    assert err["type"] == etype, err
    assert isinstance(err["message"], str) and err["message"], err
    return err


# --- create ---------------------------------------------------------------------------------------------------


def test_text_input_is_answered_like_chat(sup):
    c = client(sup)
    r = c.responses.create(model=TINY, input="Hello", max_output_tokens=9)
    assert r.object == "response" and r.id.startswith("resp_"), r
    assert r.model == "ai/tiny:latest", r
    # The tiny model never stops: it is cut by max_output_tokens, which the Responses API calls incomplete.
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens", r
    [item] = r.output
    assert item.type == "message" and item.role == "assistant" and item.id, item
    assert [p.type for p in item.content] == ["output_text"], item
    assert r.usage.output_tokens == 9, r.usage
    assert r.usage.total_tokens == r.usage.input_tokens + 9, r.usage
    # The same prompt through chat completions: the same text (temperature 0) and the same prompt tokens.
    chat = c.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "Hello"}], max_tokens=9)
    assert r.output_text == chat.choices[0].message.content, (r.output_text, chat)
    assert r.usage.input_tokens == chat.usage.prompt_tokens, (r.usage, chat.usage)


def test_instructions_and_message_items(sup):
    c = client(sup)
    plain = c.responses.create(model=TINY, input="Hello", max_output_tokens=1)
    told = c.responses.create(model=TINY, input="Hello", instructions="You are a pirate. Answer as one.",
                              max_output_tokens=1)
    assert told.instructions == "You are a pirate. Answer as one.", told
    # The instructions are a system message, in the chat template's words: exactly what chat counts for it.
    chat = c.chat.completions.create(model=TINY, max_tokens=1, messages=[
        {"role": "system", "content": "You are a pirate. Answer as one."}, {"role": "user", "content": "Hello"}])
    assert told.usage.input_tokens == chat.usage.prompt_tokens > plain.usage.input_tokens, (told.usage, plain.usage)
    # Message items, with and without "type", string and part content, an earlier assistant turn.
    items = c.responses.create(model=TINY, max_output_tokens=1, input=[
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {"role": "user", "content": "How are you?"},
    ])
    chat = c.chat.completions.create(model=TINY, max_tokens=1, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How are you?"}])
    assert items.usage.input_tokens == chat.usage.prompt_tokens, (items.usage, chat.usage)


def test_every_route_answers_and_one_runner_serves_them(sup):
    for base, route in BASES.items():
        r = client(sup, base).responses.create(model=TINY, input="Hello", max_output_tokens=2)
        assert r.usage.output_tokens == 2, (route, r)
        assert client(sup, base).responses.retrieve(r.id).id == r.id, route
    assert len(sup.ps()) == 1, sup.ps()


def test_json_schema_format_is_parsed(smol):
    class Person(pydantic.BaseModel):
        name: str
        age: int

    c = client(smol)
    prompt = "Alice is 30 years old. Give her name and age."
    parsed = c.responses.parse(model=SMOL, input=prompt, text_format=Person, temperature=0, max_output_tokens=48)
    assert parsed.status == "completed", parsed
    assert isinstance(parsed.output_parsed, Person), parsed
    assert parsed.output_parsed.age >= 0, parsed.output_parsed
    assert parsed.text.format.type == "json_schema", parsed.text
    # A schema given as a dict: the text validates against it; without it the model answers prose.
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    r = c.responses.create(model=SMOL, input="Name a city in France.", temperature=0, max_output_tokens=48,
                           text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(r.output_text), schema)
    prose = c.responses.create(model=SMOL, input="Name a city in France.", temperature=0, max_output_tokens=48)
    with pytest.raises(ValueError):
        json.loads(prose.output_text)
    # json_object: any JSON object.
    r = c.responses.create(model=SMOL, input="Describe Paris as JSON.", temperature=0, max_output_tokens=48,
                           text={"format": {"type": "json_object"}})
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text), dict), r.output_text
    else:  # cut by max_output_tokens: still the start of an object
        assert r.output_text.lstrip().startswith("{"), r.output_text


# --- streams --------------------------------------------------------------------------------------------------


def test_sdk_stream_events_arrive_in_order_and_make_the_final_text(smol):
    c = client(smol)
    with c.responses.stream(model=SMOL, input="Say hello", temperature=0, max_output_tokens=64) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"], types
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"], types
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2 and set(types[4:-4]) == {"response.output_text.delta"}, types
    assert [e.sequence_number for e in events] == list(range(len(events))), events
    assert final.status == "completed", final
    assert final.output_text == "".join(deltas) and final.output_text, (final.output_text, deltas)
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == final.output_text, done
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0, final.usage
    # The same text as a whole answer (temperature 0), and the streamed response is kept like a whole one.
    whole = c.responses.create(model=SMOL, input="Say hello", temperature=0, max_output_tokens=64)
    assert whole.output_text == final.output_text, (whole.output_text, final.output_text)
    kept = c.responses.retrieve(final.id)
    assert kept.output_text == final.output_text and kept.usage == final.usage, kept


def test_raw_stream_cut_by_max_output_tokens_ends_incomplete(sup):
    events = list(client(sup).responses.create(model=TINY, input="Hello", max_output_tokens=6, stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.incomplete", types
    assert [e.sequence_number for e in events] == list(range(len(events))), types
    last = events[-1].response
    assert last.incomplete_details.reason == "max_output_tokens" and last.usage.output_tokens == 6, last
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    # The engine drops an incomplete UTF-8 tail at the very end of a stream; the whole text keeps it as U+FFFD.
    whole = client(sup).responses.create(model=TINY, input="Hello", max_output_tokens=6)
    assert whole.output_text.startswith(deltas) and set(whole.output_text[len(deltas):]) <= {"\ufffd"}, (deltas, whole)


def test_the_inspector_and_metrics_record_responses(sup):
    c = client(sup)
    whole = c.responses.create(model=TINY, input=[{"role": "user", "content": "hi there"}], max_output_tokens=4)
    streamed = list(c.responses.create(model=TINY, input="again", max_output_tokens=5, stream=True))
    text = "".join(e.delta for e in streamed if e.type == "response.output_text.delta")

    def records():
        recs = sup.get("/engines/requests").json()
        return len(recs) >= 2 and recs
    recs = wait_until(records, 5, "two records")
    by_prompt = {r["prompt"]: r for r in recs}
    rec = by_prompt["hi there"]
    assert (rec["dialect"], rec["route"], rec["status"]) == ("openai", "/v1/responses", 200), rec
    assert rec["answer"] == whole.output_text and rec["completion_tokens"] == 4, rec
    assert rec["prompt_tokens"] == whole.usage.input_tokens, rec
    rec = by_prompt["again"]
    assert rec["streamed"] and rec["answer"] == text and rec["completion_tokens"] == 5, rec
    metrics = sup.get("/metrics").text
    assert 'route="/v1/responses"' in metrics, metrics[:2000]


def test_engine_killed_mid_stream_ends_with_response_failed_and_is_kept_failed(supervisors):
    # At --ctx-size 8192 the tiny model streams 4000 tokens in seconds, and the first delta comes within
    # milliseconds: an engine killed right after it is killed mid-generation (see test_engine_failure.py).
    sup = supervisors.start(models=[supervisors.tiny_model(context_size=8192)])
    s = sup.stream("/v1/responses", {"model": TINY, "max_output_tokens": 4000, "input": "Hello", "stream": True},
                   timeout=30)
    try:
        assert s.status == 200
        seen = []
        while not seen or seen[-1]["type"] != "response.output_text.delta":
            d = s.next_data()
            assert d is not None, f"the stream ended before the first delta: {seen}"
            seen.append(json.loads(d))
        [spawn] = sup.spawns()
        os.kill(spawn.pid, signal.SIGKILL)
        rest = [json.loads(d) for d in s.rest()]
    finally:
        s.close()
    events = seen + rest
    types = [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events))), types[-5:]
    assert "response.completed" not in types and "response.incomplete" not in types, types[-5:]
    assert types[-1] == "response.failed" and types.count("response.failed") == 1, types[-5:]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error", failed
    assert failed["error"]["message"], failed
    # Kept as it ended, as OpenAI keeps a failed response.
    assert client(sup).responses.retrieve(failed["id"]).status == "failed"
    # The next request gets a new engine.
    wait_until(lambda: pid_gone(spawn.pid), 5.0, f"killed engine pid {spawn.pid} to be reaped")
    r = client(sup).responses.create(model=TINY, input="Hello", max_output_tokens=2)
    assert r.usage.output_tokens == 2, r
    assert len(sup.spawns()) == 2


# --- the store ------------------------------------------------------------------------------------------------


def test_retrieve_delete_and_input_items(sup):
    c = client(sup)
    r = c.responses.create(model=TINY, max_output_tokens=3, metadata={"k": "v"}, input=[
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"}])
    got = c.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump(), (got, r)
    assert got.metadata == {"k": "v"}, got
    items = c.responses.input_items.list(r.id)
    # Newest first, as OpenAI lists them.
    texts = [i.content[0].text for i in items.data]
    assert texts == ["three", "two", "one"], items
    assert [i.role for i in items.data] == ["user", "assistant", "user"], items
    assert items.first_id == items.data[0].id and items.last_id == items.data[-1].id, items
    assert not items.has_more, items
    page = c.responses.input_items.list(r.id, order="asc", limit=2)
    assert [i.content[0].text for i in page.data] == ["one", "two"] and page.has_more, page
    rest = c.responses.input_items.list(r.id, order="asc", limit=2, after=page.last_id)
    assert [i.content[0].text for i in rest.data] == ["three"] and not rest.has_more, rest
    deleted = sup.delete(f"/v1/responses/{r.id}")
    assert deleted.status_code == 200 and deleted.json() == {"id": r.id, "object": "response.deleted",
                                                             "deleted": True}, deleted.text
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.input_items.list(r.id)


def test_sdk_delete(sup):
    c = client(sup)
    r = c.responses.create(model=TINY, input="Hello", max_output_tokens=1)
    assert c.responses.delete(r.id) is None  # the SDK answers None for a 200
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)


def test_store_false_is_not_kept(sup):
    c = client(sup)
    r = c.responses.create(model=TINY, input="Hello", max_output_tokens=1, store=False)
    assert r.store is False, r
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model=TINY, input="Again", max_output_tokens=1, previous_response_id=r.id)
    streamed = list(c.responses.create(model=TINY, input="Hello", max_output_tokens=1, store=False, stream=True))
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(streamed[-1].response.id)


def test_the_store_is_bounded(supervisors):
    sup = supervisors.start(server={"responses_max": 2})
    c = client(sup)
    ids = [c.responses.create(model=TINY, input="Hello", max_output_tokens=1).id for _ in range(3)]
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(ids[0])
    assert [c.responses.retrieve(i).id for i in ids[1:]] == ids[1:]


def test_two_turns_chain_with_previous_response_id(sup):
    c = client(sup)
    first = c.responses.create(model=TINY, input="Hello", instructions="Be brief.", max_output_tokens=5)
    second = c.responses.create(model=TINY, input="Again", previous_response_id=first.id, max_output_tokens=5)
    assert second.previous_response_id == first.id, second
    alone = c.responses.create(model=TINY, input="Again", max_output_tokens=5)
    # The second turn's prompt is the first turn's input and answer, then its own (instructions are not carried
    # over, as OpenAI does): exactly what chat counts for that conversation, more than the turn alone.
    chat = c.chat.completions.create(model=TINY, max_tokens=1, messages=[
        {"role": "user", "content": "Hello"}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "Again"}])
    assert second.usage.input_tokens == chat.usage.prompt_tokens, (second.usage, chat.usage)
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens // 2, (second, alone)
    # Only the second turn's own input is its input_items.
    assert [i.content[0].text for i in c.responses.input_items.list(second.id).data] == ["Again"]
    # A third turn carries both.
    third = c.responses.create(model=TINY, input="More", previous_response_id=second.id, max_output_tokens=1)
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens // 2, third.usage


# --- tools ----------------------------------------------------------------------------------------------------


def test_a_function_tool_round_trip_reaches_the_engine(supervisors, tmp_path):
    """The tool, the forced choice, the model's call and its output reach the engine as chat has them.

    llama-server drops tools for a chat template that does not render them (SmolLM2's and the tiny model's), so no
    local test model can be made to call a function; the forced call's answer is the engine's text, and the call is
    sent back as the conversation a client would send after running it. What the model's call becomes is proven
    against an engine that calls (tests/front.rs) and in the golden tests."""
    spy = engine_spy(supervisors.prereqs, tmp_path / "spy")
    sup = supervisors.start(models=[supervisors.smollm2_model()], engine_binary=str(spy.binary), env=spy.env)
    c = client(sup)
    first = c.responses.create(model=SMOL, input="What is the weather in Paris?", tools=[WEATHER],
                               tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=8)
    assert first.tools[0].name == "get_weather" and first.tool_choice.name == "get_weather", first
    calls = [o for o in first.output if o.type == "function_call"]
    # What a client sends back: the output of the call it ran (and the call itself, when the model only wrote text
    # and the client decided to call anyway, as a scripted agent does).
    call_id = calls[0].call_id if calls else "call_weather_1"
    call = [] if calls else [{"type": "function_call", "call_id": call_id, "name": "get_weather",
                              "arguments": json.dumps({"city": "Paris"})}]
    second = c.responses.create(model=SMOL, previous_response_id=first.id, tools=[WEATHER], max_output_tokens=8,
                                input=[*call, {"type": "function_call_output", "call_id": call_id,
                                               "output": "sunny, 21 C"}])
    assert second.status in ("completed", "incomplete") and second.output_text, second
    sent_first, sent_second = spy.bodies()
    assert sent_first["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": WEATHER["description"], "parameters": WEATHER["parameters"]}}]
    assert sent_first["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}, sent_first
    msgs = sent_second["messages"]
    # The call joins the assistant turn it follows; its output is a tool message after it.
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool"], msgs
    assert msgs[0] == {"role": "user", "content": "What is the weather in Paris?"}, msgs
    [sent_call] = msgs[1]["tool_calls"]
    assert sent_call["id"] == call_id and sent_call["function"]["name"] == "get_weather", msgs[1]
    assert json.loads(sent_call["function"]["arguments"]) == {"city": "Paris"} or calls, msgs[1]
    assert msgs[2] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": call_id}, msgs


# --- errors ---------------------------------------------------------------------------------------------------


def test_unknown_model_is_404_in_openais_envelope(sup):
    with pytest.raises(openai.NotFoundError) as e:
        client(sup).responses.create(model="ai/nope", input="Hello")
    assert e.value.status_code == 404
    err = assert_openai_error(sup.post("/v1/responses", {"model": "ai/nope", "input": "x"}), 404, "not_found_error")
    assert err["code"] == "model_not_found", err
    assert_openai_error(sup.post("/responses", {"model": "ai/nope", "input": "x"}), 404, "not_found_error")
    assert_openai_error(sup.get("/v1/responses/resp_nope"), 404, "not_found_error")
    assert_openai_error(sup.get("/responses/resp_nope/input_items"), 404, "not_found_error")
    assert_openai_error(sup.delete("/engines/v1/responses/resp_nope"), 404, "not_found_error")
    assert_openai_error(sup.post("/v1/responses", {"model": TINY, "input": "x", "previous_response_id": "resp_nope"}),
                        404, "not_found_error")
    assert_openai_error(sup.post("/engines/nope/v1/responses", {"model": TINY, "input": "x"}), 404, "not_found_error")
    # An unmatched path under /responses is OpenAI's 404 too.
    assert_openai_error(sup.get("/responses/a/b/c"), 404, "not_found_error")


@pytest.mark.parametrize("body", [
    b"{not json",
    b"",
    b'{"input": "x"}',
    b'{"model": "ai/tiny"}',
    b'{"model": "ai/tiny", "input": []}',
    b'{"model": "ai/tiny", "input": 7}',
    b'{"model": "ai/tiny", "input": [{"role": "robot", "content": "x"}]}',
    b'{"model": "ai/tiny", "input": "x", "max_output_tokens": 0}',
    b'{"model": "ai/tiny", "input": "x", "tools": [{"type": "web_search"}]}',
    b'{"model": "ai/tiny", "input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": "sometimes"}',
    b'{"model": "ai/tiny", "input": "x", "text": {"format": {"type": "json_schema"}}}',
    b'{"model": "ai/tiny", "input": "x", "background": true}',
], ids=["not-json", "empty", "no-model", "no-input", "empty-input", "input-number", "bad-role", "zero-tokens",
        "server-tool", "bad-tool-choice", "schema-without-name", "background"])
def test_malformed_requests_are_400(sup, body):
    assert_openai_error(sup.post("/v1/responses", data=body, headers={"content-type": "application/json"}),
                        400, "invalid_request_error")


def test_bad_input_items_query_is_400(sup):
    r = client(sup).responses.create(model=TINY, input="Hello", max_output_tokens=1)
    assert_openai_error(sup.get(f"/v1/responses/{r.id}/input_items?order=up"), 400, "invalid_request_error")
    assert_openai_error(sup.get(f"/v1/responses/{r.id}/input_items?limit=0"), 400, "invalid_request_error")
    assert_openai_error(sup.get(f"/v1/responses/{r.id}/input_items?after=msg_nope"), 400, "invalid_request_error")


def test_an_engine_that_is_not_the_models_is_refused(sup):
    err = assert_openai_error(sup.post("/engines/vllm/v1/responses", {"model": TINY, "input": "x"}), 400,
                              "invalid_request_error")
    assert "served by llama.cpp, not vllm" in err["message"], err
    assert sup.ps() == [], "nothing was started for it"


def test_an_image_for_a_model_without_a_projector_is_400(sup):
    png = "data:image/png;base64,iVBORw0KGgo="
    err = assert_openai_error(sup.post("/v1/responses", {"model": TINY, "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what is this?"}, {"type": "input_image", "image_url": png}]}]}),
        400, "invalid_request_error")
    assert "does not accept images" in err["message"], err
    assert sup.ps() == [], "refused before anything loads"
