"""Tests whose meaning depends on what a real model says: SmolLM2-135M-Instruct (Q4_1, 98 MB, with its ChatML chat
template; scripts/ensure-smollm2.sh), served as `ai/smollm2` by the real llama-server at temperature 0.

The tiny random-weight model cannot carry these: its byte vocabulary spells no JSON worth validating, it has no
sentence for a stop sequence to cut, and its chat template is ours. Each test is small (a few dozen tokens at most)
and each one checks that its feature is what made the difference (the same prompt without the stop sequence runs
past it, without the schema answers prose, the template adds its system prompt's tokens).
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import requests

from harness import HTTP_TIMEOUT, parse_chunks

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
# Deterministic at temperature 0: 🐳 is four bytes that SmolLM2's tokenizer splits over several tokens, so a stream
# that cut or re-joined tokens' bytes carelessly would show U+FFFD or lose bytes.
UTF8_PROMPT = "Repeat exactly: café, naïve, 日本語, emoji 🐳"


@pytest.fixture
def smol(supervisors):
    return supervisors.start(models=[supervisors.smollm2_model()])


def openai_chat(sup, content, **extra) -> dict:
    body = {"model": "ai/smollm2", "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": 24, **extra}
    r = sup.post("/engines/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    return r.json()


def anthropic(sup, content, **extra) -> dict:
    body = {"model": "ai/smollm2", "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": content}], **extra}
    r = sup.post("/v1/messages", body)
    assert r.status_code == 200, r.text
    return r.json()


def ollama_chat(sup, content, options=None, **extra) -> dict:
    body = {"model": "ai/smollm2", "messages": [{"role": "user", "content": content}], "stream": False,
            "options": {"temperature": 0, "num_predict": 24, **(options or {})}, **extra}
    r = sup.post("/api/chat", body)
    assert r.status_code == 200, r.text
    return r.json()


def text_of(message: dict) -> str:
    return "".join(b["text"] for b in message["content"] if b["type"] == "text")


def test_a_stop_sequence_cuts_real_text_in_every_dialect(smol):
    full = openai_chat(smol, "Say hello")["choices"][0]["message"]["content"]
    assert "welcome" in full, f"SmolLM2's greeting changed: {full!r}"
    before = full[: full.index("welcome")]
    assert before.strip(), full

    o = openai_chat(smol, "Say hello", stop=["welcome"])
    assert o["choices"][0]["message"]["content"] == before, o
    assert o["choices"][0]["finish_reason"] == "stop", o

    a = anthropic(smol, "Say hello", stop_sequences=["welcome"])
    assert text_of(a) == before, a
    assert (a["stop_reason"], a["stop_sequence"]) == ("stop_sequence", "welcome"), a

    m = ollama_chat(smol, "Say hello", options={"stop": ["welcome"]})
    assert m["message"]["content"] == before, m
    assert m["done_reason"] == "stop", m


@pytest.mark.parametrize("dialect", ["openai", "ollama", "anthropic"])
def test_a_json_schema_constrains_the_answer(smol, dialect):
    prompt = "Describe a cat."
    if dialect == "openai":
        answer = lambda **kw: openai_chat(smol, prompt, max_tokens=64, **kw)["choices"][0]["message"]["content"]
        constrained = answer(response_format={"type": "json_schema",
                                              "json_schema": {"name": "cat", "strict": True, "schema": SCHEMA}})
    elif dialect == "ollama":
        answer = lambda **kw: ollama_chat(smol, prompt, options={"num_predict": 64}, **kw)["message"]["content"]
        constrained = answer(format=SCHEMA)
    else:  # Anthropic's structured outputs; the model's template has no tools, so tool use cannot force it
        answer = lambda **kw: text_of(anthropic(smol, prompt, max_tokens=64, **kw))
        constrained = answer(output_format={"type": "json_schema", "schema": SCHEMA})
    value = json.loads(constrained)
    jsonschema.validate(value, SCHEMA)
    # The schema is what made it JSON: the same prompt without it is prose.
    plain = answer()
    with pytest.raises(ValueError):
        json.loads(plain)


def test_logprobs_and_top_logprobs(smol):
    j = openai_chat(smol, "Say hello", max_tokens=4, logprobs=True, top_logprobs=3)
    choice = j["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == j["usage"]["completion_tokens"] == 4, j
    assert b"".join(bytes(t["bytes"]) for t in content).decode() == choice["message"]["content"], j
    for t in content:
        assert t["logprob"] <= 0, t
        top = t["top_logprobs"]
        assert len(top) == 3, t
        assert [x["logprob"] for x in top] == sorted((x["logprob"] for x in top), reverse=True), t
        # Greedy decoding picks the most likely token.
        assert top[0]["token"] == t["token"] and top[0]["logprob"] == pytest.approx(t["logprob"]), t
    # Without the flag, none.
    assert openai_chat(smol, "Say hello", max_tokens=2)["choices"][0].get("logprobs") is None


def test_the_models_chat_template_is_applied(smol):
    messages = [{"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another one."}]
    r = smol.post("/engines/v1/chat/completions",
                  {"model": "ai/smollm2", "messages": messages, "temperature": 0, "max_tokens": 2})
    assert r.status_code == 200, r.text
    prompt_tokens = r.json()["usage"]["prompt_tokens"]
    [spawn] = smol.spawns()
    engine = f"http://127.0.0.1:{spawn.port}"
    # llama-server's own rendering of the model's template, then its own tokenizer.
    t = requests.post(engine + "/apply-template", json={"messages": messages}, timeout=HTTP_TIMEOUT)
    assert t.status_code == 200, t.text
    prompt = t.json()["prompt"]
    assert prompt.count("<|im_start|>") == 5 and prompt.endswith("<|im_start|>assistant\n"), prompt
    tok = requests.post(engine + "/tokenize", json={"content": prompt, "parse_special": True},
                        timeout=HTTP_TIMEOUT)
    assert tok.status_code == 200, tok.text
    assert prompt_tokens == len(tok.json()["tokens"]), (prompt_tokens, prompt)
    # The raw text alone is far fewer tokens: the template's markers are in the count.
    raw = requests.post(engine + "/tokenize", json={"content": "".join(m["content"] for m in messages)},
                        timeout=HTTP_TIMEOUT).json()["tokens"]
    assert prompt_tokens >= len(raw) + 4 * 3, (prompt_tokens, len(raw))


def test_a_multibyte_answer_streams_intact_in_every_dialect(smol):
    want = openai_chat(smol, UTF8_PROMPT)["choices"][0]["message"]["content"]
    assert "🐳" in want and "\ufffd" not in want, want
    # The test means something only if the answer's tokens split characters: llama-server's tokenizer lists such
    # pieces as byte arrays (a whole piece is a string).
    [spawn] = smol.spawns()
    tok = requests.post(f"http://127.0.0.1:{spawn.port}/tokenize", json={"content": want, "with_pieces": True},
                        timeout=HTTP_TIMEOUT)
    assert tok.status_code == 200, tok.text
    assert any(isinstance(t["piece"], list) for t in tok.json()["tokens"]), tok.text

    msgs = [{"role": "user", "content": UTF8_PROMPT}]
    s = smol.stream("/engines/v1/chat/completions",
                    {"model": "ai/smollm2", "messages": msgs, "temperature": 0, "max_tokens": 24, "stream": True})
    assert s.status == 200
    got = "".join(c["choices"][0]["delta"].get("content") or "" for c in parse_chunks(s.rest()) if c["choices"])
    s.close()
    assert got == want, ("openai", got, want)

    s = smol.stream("/v1/messages", {"model": "ai/smollm2", "messages": msgs, "temperature": 0, "max_tokens": 24,
                                     "stream": True})
    assert s.status == 200
    events = [json.loads(d) for d in s.rest()]
    s.close()
    got = "".join(e["delta"]["text"] for e in events
                  if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta")
    assert got == want, ("anthropic", got, want)

    r = requests.post(smol.url("/api/chat"), json={"model": "ai/smollm2", "messages": msgs, "stream": True,
                                                   "options": {"temperature": 0, "num_predict": 24}},
                      stream=True, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.iter_lines() if line]  # NDJSON: bytes split only at newlines
    assert lines[-1]["done"] is True, lines[-1]
    got = "".join(x["message"]["content"] for x in lines)
    assert got == want, ("ollama", got, want)


def test_anthropic_count_tokens_equals_the_prompt_tokens_the_engine_reports(smol):
    body = {"model": "ai/smollm2", "system": "You are terse.",
            "messages": [{"role": "user", "content": "Name a whale."},
                         {"role": "assistant", "content": "The blue whale."},
                         {"role": "user", "content": "And a dolphin?"}]}
    r = smol.post("/v1/messages/count_tokens", body)
    assert r.status_code == 200, r.text
    counted = r.json()["input_tokens"]
    m = smol.post("/v1/messages", {**body, "max_tokens": 1, "temperature": 0})
    assert m.status_code == 200, m.text
    u = m.json()["usage"]
    # Anthropic's input_tokens excludes what the prompt cache served: the prompt is their sum.
    engine = u["input_tokens"] + u.get("cache_read_input_tokens", 0) + u.get("cache_creation_input_tokens", 0)
    assert counted == engine, (counted, u)
    assert counted > 20, counted  # the template's system turn and markers are counted too
