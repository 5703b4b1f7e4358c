"""Ollama's model surface through the official `ollama` Python SDK against the real binary and the real llama-server:
blob uploads (`create_blob`, `HEAD`/`POST /api/blobs/sha256:…`), `create` from an uploaded GGUF and from a stored
model with parameters, a system prompt and a template, `show` (capabilities, model_info, parameters, system),
`copy`, and `push` to a local docker-registry then a pull back by the same name; bad inputs answer 4xx with
`{"error": …}`.

The tiny model never stops by itself (its end tokens are zeroed), so at temperature 0 it generates exactly
`num_predict` tokens: a model's default `num_predict` shows in `eval_count`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ollama
import pytest

from harness import sha256_file
from registry import Registry, get_manifest

MSGS = [{"role": "user", "content": "Hello"}]
SYSTEM = "You are a careful assistant who answers every question briefly and politely. " * 3
# A Jinja chat template (what llama-server runs) with a fixed preamble, that mentions tools.
TEMPLATE = ("Tools may be offered; none are today. " * 10 + "{% if tools %}{{ tools }}{% endif %}"
            + "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")


def client(sup) -> ollama.Client:
    return ollama.Client(host=sup.base)


def lines(r) -> list[dict]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def system_of(sup, model: str) -> str | None:
    r = sup.post("/api/show", {"model": model})
    assert r.status_code == 200, r.text
    return r.json().get("system")


def head(sup, digest: str) -> int:
    return sup.session.head(sup.url(f"/api/blobs/{digest}"), timeout=30).status_code


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "registry")
    yield r
    r.stop()


def test_create_from_an_uploaded_blob_then_show_and_chat(supervisors):
    sup = supervisors.start(models=[])
    c = client(sup)
    gguf = supervisors.prereqs.tiny_gguf
    digest = f"sha256:{sha256_file(gguf)}"
    assert head(sup, digest) == 404
    assert c.create_blob(gguf) == digest
    assert head(sup, digest) == 200
    assert (sup.store / "uploads/sha256" / digest[7:]).is_file()
    # The same bytes again: the store has them already.
    r = sup.post(f"/api/blobs/{digest}", data=gguf.read_bytes())
    assert r.status_code == 200, r.text

    statuses = [p.status for p in c.create(model="me/fromblob", files={"tiny.gguf": digest}, stream=True)]
    assert statuses[0] == "parsing GGUF" and statuses[-1] == "success", statuses
    assert f"using existing layer {digest}" in statuses and "writing manifest" in statuses, statuses
    # The upload became the model's weights, byte for byte, not a copy beside them.
    assert not (sup.store / "uploads/sha256" / digest[7:]).exists()
    assert sha256_file(sup.store / "blobs/sha256" / digest[7:]) == digest[7:]
    assert head(sup, digest) == 200
    [m] = c.list().models
    assert m.model == "me/fromblob:latest" and m.size == gguf.stat().st_size, m

    s = c.show("me/fromblob")
    assert s.capabilities == ["completion"], s.capabilities
    assert s.modelinfo["general.architecture"] == "llama", s.modelinfo
    assert isinstance(s.modelinfo["llama.context_length"], int), s.modelinfo
    assert "im_start" in (s.template or ""), s.template
    assert s.details.format == "gguf" and s.details.family == "llama", s.details
    r = c.chat(model="me/fromblob", messages=MSGS, options={"temperature": 0, "num_predict": 3}, stream=False)
    assert r.done and r.eval_count == 3, r
    # stream: false answers the last line alone.
    r = sup.post("/api/create", {"model": "me/again", "files": {"t.gguf": digest}, "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}, r.text


def test_create_from_a_model_with_parameters_system_and_template(supervisors):
    sup = supervisors.start()  # ai/tiny
    c = client(sup)
    base_id = sup.get("/models/ai/tiny").json()["id"]
    out = list(c.create(model="me/derived", from_="ai/tiny", stream=True,
                        parameters={"num_ctx": 2048, "temperature": 0, "num_predict": 4, "stop": ["zzz"]},
                        system=SYSTEM))
    assert out[0].status == "reading model metadata" and out[-1].status == "success", out
    derived = sup.get("/models/me/derived").json()
    assert derived["id"] != base_id and derived["config"]["context_size"] == 2048, derived
    # The weights are shared: the base's GGUF layer is the derived model's.
    base_blobs = {p.name for p in (sup.store / "blobs/sha256").iterdir()}
    assert len(base_blobs) == 3, base_blobs  # weights + two configs

    s = c.show("me/derived")
    assert "temperature" in s.parameters and "num_predict" in s.parameters and '"zzz"' in s.parameters, s.parameters
    # The SDK's ShowResponse has no `system`; Ollama's answer does.
    assert system_of(sup, "me/derived") == SYSTEM
    assert system_of(sup, "ai/tiny") is None

    # The model's parameters are the defaults of its requests: num_predict 4 at temperature 0.
    r = c.chat(model="me/derived", messages=MSGS, stream=False)
    assert r.eval_count == 4, r
    r = c.chat(model="me/derived", messages=MSGS, options={"num_predict": 2}, stream=False)
    assert r.eval_count == 2, r  # the request's own options win
    assert sup.spawns()[-1].flag("--ctx-size") == "2048"
    # The system prompt goes first when the messages bring none, so the prompt grows by its tokens ...
    opts = {"temperature": 0, "num_predict": 1}
    plain = c.chat(model="ai/tiny", messages=MSGS, options=opts, stream=False).prompt_eval_count
    with_system = c.chat(model="me/derived", messages=MSGS, options=opts, stream=False).prompt_eval_count
    assert with_system >= plain + 50, (plain, with_system)
    # ... and not when they do.
    own = [{"role": "system", "content": "Be short."}, *MSGS]
    assert (c.chat(model="me/derived", messages=own, options=opts, stream=False).prompt_eval_count
            == c.chat(model="ai/tiny", messages=own, options=opts, stream=False).prompt_eval_count)
    gen = c.generate(model="me/derived", prompt="Hello", options=opts, stream=False)
    assert gen.prompt_eval_count >= plain + 50, gen

    # A Jinja template becomes the chat template llama-server runs; it mentions tools, so `show` says so.
    assert c.show("ai/tiny").capabilities == ["completion"]
    c.create(model="me/templated", from_="me/derived", template=TEMPLATE)
    s = c.show("me/templated")
    assert s.template == TEMPLATE and s.capabilities == ["completion", "tools"], s
    assert system_of(sup, "me/templated") == SYSTEM  # kept from its base
    templated = c.chat(model="me/templated", messages=MSGS, options=opts, stream=False).prompt_eval_count
    assert templated >= with_system + 50, (with_system, templated)
    spawn = sup.spawns()[-1]
    template_blob = Path(spawn.flag("--chat-template-file"))
    assert template_blob.parent == sup.store / "blobs/sha256" and template_blob.read_text() == TEMPLATE


def test_copy(sup):
    c = client(sup)
    assert c.copy("ai/tiny", "me/copy").status == "success"
    models = {m.model: m.digest for m in c.list().models}
    assert models["me/copy:latest"] == models["ai/tiny:latest"], models
    r = sup.post("/api/copy", {"source": "ai/tiny", "destination": "me/copy2"})
    assert r.status_code == 200 and r.content == b"", r.text
    with pytest.raises(ollama.ResponseError) as e:
        c.copy("nope", "me/x")
    assert e.value.status_code == 404 and "not found" in e.value.error
    for bad in [{"source": "ai/tiny", "destination": "a/../b"}, {"source": "ai/tiny", "destination": ""},
                {"source": "", "destination": "me/y"},
                {"source": "ai/tiny", "destination": "me/z@sha256:" + "a" * 64}]:
        r = sup.post("/api/copy", bad)
        assert r.status_code == 400 and r.json()["error"], (bad, r.text)
    assert "me/y:latest" not in {m.model for m in c.list().models}


def test_push_then_pull_back_by_the_same_name(supervisors, reg):
    a = supervisors.start(name="pusher")
    ca = client(a)
    target = f"{reg.host}/test/ol:v1"
    ca.copy("ai/tiny", target)
    out = [p.model_dump(exclude_none=True) for p in ca.push(target, insecure=True, stream=True)]
    statuses = [p["status"] for p in out]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"], statuses
    pushing = [p for p in out if "digest" in p]
    assert pushing and all(p["status"] == f"pushing {p['digest'][7:19]}" for p in pushing), pushing
    assert pushing[-1]["completed"] == pushing[-1]["total"] == supervisors.prereqs.tiny_gguf.stat().st_size
    manifest, digest = get_manifest(reg, "test/ol", "v1")
    assert digest == a.get(f"/models/{target}").json()["id"]
    assert manifest["layers"][0]["digest"] == f"sha256:{supervisors.prereqs.tiny_sha256}"
    # stream: false answers the outcome alone.
    assert ca.push(target, stream=False).status == "success"

    b = supervisors.start(name="puller", models=[])
    cb = client(b)
    assert cb.pull(target, insecure=True).status == "success"
    [m] = cb.list().models
    assert m.model == target and m.digest == digest[7:], m
    r = cb.chat(model=target, messages=MSGS, options={"temperature": 0, "num_predict": 2}, stream=False)
    assert r.eval_count == 2, r

    with pytest.raises(ollama.ResponseError) as e:
        ca.push(f"{reg.host}/test/nope:v1")
    assert e.value.status_code == 404, e.value
    r = a.post("/api/push", {"model": "a/../b"})
    assert r.status_code == 400 and r.json()["error"], r.text
    r = a.post("/api/push", {})
    assert r.status_code == 400 and r.json()["error"], r.text


def test_bad_inputs_are_4xx_with_an_ollama_error(supervisors):
    sup = supervisors.start(server={"max_blob_bytes": 4096})
    c = client(sup)
    data = b"not a gguf, but bytes all the same"
    right = "sha256:" + hashlib.sha256(data).hexdigest()
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    r = sup.post(f"/api/blobs/{wrong}", data=data)
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"], r.text
    assert head(sup, wrong) == 404 and head(sup, right) == 404
    assert list((sup.store / "uploads/sha256").iterdir()) == []
    for bad in ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64]:
        r = sup.post(f"/api/blobs/{bad}", data=data)
        assert r.status_code == 400 and r.json()["error"], (bad, r.text)
        assert head(sup, bad) == 400
    # Past [server] max_blob_bytes: 413, whether the length is declared or the body is streamed.
    big = bytes(5000)
    big_digest = "sha256:" + hashlib.sha256(big).hexdigest()
    r = sup.post(f"/api/blobs/{big_digest}", data=big)
    assert r.status_code == 413 and "max_blob_bytes" in r.json()["error"], r.text
    r = sup.post(f"/api/blobs/{big_digest}", data=iter([big[:3000], big[3000:]]))
    assert r.status_code == 413 and "max_blob_bytes" in r.json()["error"], r.text
    assert head(sup, big_digest) == 404

    r = sup.post(f"/api/blobs/{right}", data=data)
    assert r.status_code == 201, r.text
    with pytest.raises(ollama.ResponseError) as e:
        c.create(model="me/junk", files={"junk.gguf": right})
    assert e.value.status_code == 400 and "GGUF" in e.value.error, e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        c.create(model="me/x", files={"x.gguf": wrong})
    assert e.value.status_code == 400 and "not been uploaded" in e.value.error, e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        c.create(model="me/x", from_="nope")
    assert e.value.status_code == 404 and "not found" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        c.create(model="a/../b", from_="ai/tiny")
    assert e.value.status_code == 400, e.value
    with pytest.raises(ollama.ResponseError) as e:
        c.create(model="me/x", from_="ai/tiny", parameters={"tempreature": 1})
    assert e.value.status_code == 400 and "tempreature" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        c.create(model="me/x", from_="ai/tiny", template="{{ .System }} {{ .Prompt }}")
    assert e.value.status_code == 400 and "Jinja" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        c.create(model="me/x", from_="ai/tiny", quantize="q4_K_M")
    assert e.value.status_code == 400 and "quantize" in e.value.error
    r = sup.post("/api/create", data=b'{"model": ')
    assert r.status_code == 400 and r.json()["error"], r.text
    assert {m.model for m in c.list().models} == {"ai/tiny:latest"}
    with pytest.raises(ollama.ResponseError) as e:
        c.show("nope")
    assert e.value.status_code == 404


def test_version_is_the_ollama_api_level_we_match(sup):
    r = sup.get("/api/version")
    assert r.status_code == 200 and r.json() == {"version": "0.12.6"}, r.text
    # Ollama's CLI checks its server with HEAD / before anything else.
    assert sup.session.head(sup.url("/"), timeout=30).status_code == 200
