"""Hostile and malformed requests, one table across the dialects: each gets its 4xx in the caller's dialect,
nothing is spawned for it, and the daemon keeps serving. (docs/reliability.md lists this table.)"""

from __future__ import annotations

import json

import pytest

from harness import figure

DEEP = b'{"model":"ai/tiny","messages":' + b"[" * 5000 + b"]" * 5000 + b"}"
CHAT = "/engines/v1/chat/completions"

# (id, method, path, raw body or JSON, expected status, dialect)
CASES = [
    ("openai malformed JSON", "POST", CHAT, b"{nope", 400, "openai"),
    ("openai invalid UTF-8", "POST", CHAT, b'{"model":"\xff\xfe"}', 400, "openai"),
    ("openai model of the wrong type", "POST", CHAT, {"model": 123, "messages": []}, 400, "openai"),
    ("openai deep nesting", "POST", CHAT, DEEP, 400, "openai"),
    ("openai model with ..", "POST", CHAT, {"model": "../../etc/passwd", "messages": []}, 400, "openai"),
    ("openai absolute path as model", "POST", CHAT, {"model": "/etc/passwd", "messages": []}, 400, "openai"),
    ("openai NUL in model", "POST", CHAT, {"model": "ai/ti\u0000ny", "messages": []}, 400, "openai"),
    ("openai unknown engine in path", "POST", "/engines/evil/v1/chat/completions", {"model": "ai/tiny"}, 404, "openai"),
    ("openai unknown model", "POST", CHAT, {"model": "ai/nope", "messages": []}, 404, "openai"),
    ("anthropic messages of the wrong type", "POST", "/v1/messages",
     {"model": "ai/tiny", "max_tokens": 4, "messages": "hi"}, 400, "anthropic"),
    ("anthropic max_tokens missing", "POST", "/v1/messages", {"model": "ai/tiny", "messages": []}, 400, "anthropic"),
    ("anthropic deep nesting", "POST", "/v1/messages", DEEP, 400, "anthropic"),
    ("ollama malformed JSON", "POST", "/api/chat", b"[1,2", 400, "ollama"),
    ("ollama options of the wrong type", "POST", "/api/chat",
     {"model": "ai/tiny", "messages": [], "options": "fast"}, 400, "ollama"),
    ("ollama name with %2e%2e", "POST", "/api/show", {"model": "ai/%2e%2e"}, 400, "ollama"),
    ("ollama copy to ..", "POST", "/api/copy", {"source": "ai/tiny", "destination": "../../etc/x"}, 400, "ollama"),
    ("ollama create named ..", "POST", "/api/create", {"model": "ai/%2e%2e", "from": "ai/tiny"}, 400, "ollama"),
    # `files` name blobs by digest; a path in its place is never read.
    ("ollama create from a server path", "POST", "/api/create",
     {"model": "ai/x", "files": {"x.gguf": "/etc/passwd"}}, 400, "ollama"),
    ("ollama create from a server path as from", "POST", "/api/create", {"model": "ai/x", "from": "/etc/passwd"}, 400,
     "ollama"),
    ("ollama blob digest with ..", "POST", "/api/blobs/sha256:..%2f..%2fx", b"x", 400, "ollama"),
    ("ollama push named ..", "POST", "/api/push", {"model": "../x"}, 400, "ollama"),
    ("native %2e%2e in path", "GET", "/models/ai/%2e%2e/x", None, 400, "native"),
    ("native encoded slash in path", "GET", "/models/ai%2f..%2fx", None, 400, "native"),
    ("native NUL in path", "GET", "/models/ai/a%00b", None, 400, "native"),
    ("native create from a relative path", "POST", "/models/create", {"from": "../m/x.gguf"}, 400, "native"),
    # Outside [store] import_roots: refused before the file system is looked at, so existence is not told.
    ("native create from outside the import roots", "POST", "/models/create", {"from": "/nonexistent/x.gguf"}, 403,
     "native"),
    ("configure flag with a path", "POST", "/engines/_configure",
     {"model": "ai/tiny", "runtime-flags": ["--log-file", "/etc/x"]}, 400, "openai"),
    ("configure --model over the API", "POST", "/engines/_configure",
     {"model": "ai/tiny", "runtime-flags": ["--model", "x.gguf"]}, 400, "openai"),
    ("configure flag off the allowlist", "POST", "/engines/_configure",
     {"model": "ai/tiny", "raw-runtime-flags": "--slot-save-path x"}, 400, "openai"),
    ("configure smuggled flag", "POST", "/engines/_configure",
     {"model": "ai/tiny", "runtime-flags": ["--seed=--log-file=x"]}, 400, "openai"),
]


def check_dialect(dialect: str, status: int, headers: dict, body: bytes) -> None:
    if dialect == "native":
        assert headers.get("content-type", "").startswith("text/plain"), headers
        assert body.strip(), body
        return
    j = json.loads(body)
    if dialect == "openai":
        assert isinstance(j["error"]["message"], str) and j["error"]["type"], j
    elif dialect == "anthropic":
        assert j["type"] == "error" and j["error"]["type"] in ("invalid_request_error", "not_found_error"), j
    elif dialect == "ollama":
        assert isinstance(j["error"], str) and j["error"], j


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_gets_a_4xx_in_its_dialect(sup, case):
    _, method, path, body, status, dialect = case
    raw = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    got, headers, answer = sup.raw(method, path, raw)
    assert got == status, (got, answer[:300])
    check_dialect(dialect, got, {k.lower(): v for k, v in headers.items()}, answer)
    assert sup.spawns() == []
    assert sup.get("/health").status_code == 200


def test_huge_max_tokens_is_bounded_by_the_engine(sup):
    # The largest max_tokens llama-server takes (2^31-1): generation stops when the context (512 tokens, the
    # default config's) is full, in well under a minute, and the usage says so.
    msgs = [{"role": "user", "content": "hi"}]
    r = sup.post(CHAT, {"model": "ai/tiny", "messages": msgs, "max_tokens": 2**31 - 1}, timeout=60)
    assert r.status_code == 200, r.text
    usage, [choice] = r.json()["usage"], r.json()["choices"]
    assert 0 < usage["completion_tokens"] and usage["prompt_tokens"] + usage["completion_tokens"] <= 512, usage
    assert choice["finish_reason"] == "length", choice
    figure("hostile.max_tokens.completion_tokens", usage["completion_tokens"])
    figure("hostile.max_tokens.prompt_tokens", usage["prompt_tokens"])
    # Past an int32 the engine refuses the value itself; its 400 reaches the caller as an OpenAI error.
    r = sup.post(CHAT, {"model": "ai/tiny", "messages": msgs, "max_tokens": 10**12}, timeout=60)
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"], r.text
    # Neither request hung nor killed anything.
    assert sup.chat(max_tokens=2).status_code == 200
