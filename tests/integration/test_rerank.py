"""Rerank, score, tokenize and detokenize, through the real binary: on a real llama-server with a tiny random BERT
cross-encoder (scripts/make-tiny-reranker.py: random weights, so the scores are noise, but each document scores
differently and the same pair always scores the same), and on the vLLM stand-in (tests/engines/vllm), which
serves vLLM's own /v1/rerank, /v1/score, /tokenize and /detokenize. Raw JSON over requests, as Cohere/Jina-style
clients send it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO, assert_openai_error, wait_until

STAND_IN = REPO / "tests/engines/vllm"
RERANKER = "ai/reranker"
QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "berlin is in germany", "the cat sat on the mat", "hello world",
        "a tiny model", "rust and python"]


@pytest.fixture(scope="session")
def reranker_gguf() -> Path:
    path = Path(os.environ.get("DMR_TINY_RERANKER_GGUF")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "dmr-supervisor/models/tiny-reranker.gguf")
    if not path.is_file() or path.stat().st_size == 0:
        pytest.fail(f"tiny reranker GGUF not found at {path} (DMR_TINY_RERANKER_GGUF): run "
                    f"`{REPO}/scripts/ensure-tiny-reranker.sh` and set DMR_TINY_RERANKER_GGUF to the path it prints",
                    pytrace=False)
    return path


@pytest.fixture
def rsup(supervisors, reranker_gguf, tmp_path):
    """A supervisor with the tiny llama (`ai/tiny`), the reranker and an embedding model of the same shape."""
    embedder = tmp_path / "embedder.gguf"
    subprocess.run([sys.executable, str(REPO / "scripts/make-tiny-reranker.py"), str(embedder), "--embedding"],
                   check=True, capture_output=True)
    return supervisors.start(models=[
        supervisors.tiny_model(),
        {"name": RERANKER, "gguf": str(reranker_gguf), "context_size": 512},
        {"name": "ai/embedder", "gguf": str(embedder), "context_size": 512},
    ])


def rerank(sup, path="/rerank", **over):
    body = {"model": RERANKER, "query": QUERY, "documents": DOCS, **over}
    return sup.post(path, body)


def results(r) -> list[dict]:
    assert r.status_code == 200, r.text
    out = r.json()["results"]
    assert all(isinstance(x["index"], int) and isinstance(x["relevance_score"], float) for x in out), out
    return out


def test_rerank_on_llama_server_is_sorted_with_valid_indices_and_top_n(rsup):
    full = results(rerank(rsup))
    assert sorted(x["index"] for x in full) == list(range(len(DOCS))), full
    scores = [x["relevance_score"] for x in full]
    assert scores == sorted(scores, reverse=True), full
    assert len(set(round(s, 4) for s in scores)) >= 3, f"the scores should differ: {scores}"
    top = results(rerank(rsup, top_n=3))
    assert len(top) == 3
    assert [x["index"] for x in top] == [x["index"] for x in full[:3]], (top, full)
    by_index = {x["index"]: x["relevance_score"] for x in full}
    for x in top:
        assert x["relevance_score"] == pytest.approx(by_index[x["index"]], abs=1e-4), (x, full)
    assert len(results(rerank(rsup, top_n=100))) == len(DOCS), "top_n past the documents gives them all"
    # The runner is a reranking runner of its own: --embeddings --reranking, mode "reranking".
    [spawn] = rsup.spawns()
    assert "--reranking" in spawn.argv and "--embeddings" in spawn.argv, spawn.argv
    assert spawn.argv[spawn.argv.index("--alias") + 1] == "ai/reranker:latest"
    [ps] = rsup.ps()
    assert (ps["mode"], ps["model_name"], ps["backend_name"]) == ("reranking", "ai/reranker:latest", "llama.cpp"), ps


def test_every_rerank_and_score_path_reaches_the_one_reranking_runner(rsup):
    first = results(rerank(rsup, top_n=2))
    for path in ["/v1/rerank", "/engines/v1/rerank", "/engines/llama.cpp/v1/rerank", "/engines/rerank",
                 "/engines/llama.cpp/rerank"]:
        got = results(rerank(rsup, path, top_n=2))
        assert [x["index"] for x in got] == [x["index"] for x in first], path
    for path in ["/score", "/v1/score", "/engines/v1/score", "/engines/llama.cpp/v1/score", "/engines/score",
                 "/engines/llama.cpp/score"]:
        r = rsup.post(path, {"model": RERANKER, "text_1": QUERY, "text_2": DOCS[:2]})
        assert r.status_code == 200, (path, r.text)
    assert len(rsup.spawns()) == 1, [s.argv for s in rsup.spawns()]


def test_score_is_translated_to_rerank_for_llama_cpp_in_input_order(rsup):
    by_index = {x["index"]: x["relevance_score"] for x in results(rerank(rsup))}
    r = rsup.post("/v1/score", {"model": RERANKER, "text_1": QUERY, "text_2": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["id"].startswith("score-") and body["model"] == "ai/reranker:latest"
    assert [d["index"] for d in body["data"]] == list(range(len(DOCS))), "input order, not sorted"
    assert all(d["object"] == "score" for d in body["data"])
    for d in body["data"]:
        assert d["score"] == pytest.approx(by_index[d["index"]], abs=1e-4), (d, by_index)
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] == 0, body
    # N:N: each pair with its own query; pair 0 is (QUERY, DOCS[0]).
    r = rsup.post("/score", {"model": RERANKER, "text_1": [QUERY, "hello"], "text_2": [DOCS[0], "world"]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert data[0]["score"] == pytest.approx(by_index[0], abs=1e-4)
    alone = results(rsup.post("/rerank", {"model": RERANKER, "query": "hello", "documents": ["world"]}))
    assert data[1]["score"] == pytest.approx(alone[0]["relevance_score"], abs=1e-4)


def test_tokenize_and_detokenize_round_trip_on_the_models_runner(rsup):
    text = "Hello world the tiny model"
    r = rsup.post("/engines/tokenize", {"model": "ai/tiny", "content": text})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens), tokens
    r = rsup.post("/engines/llama.cpp/detokenize", {"model": "ai/tiny", "tokens": tokens})
    assert r.status_code == 200, r.text
    # llama.cpp's SentencePiece vocabulary gives the word-boundary space back in front.
    assert r.json()["content"].lstrip(" ") == text, r.json()
    [spawn] = rsup.spawns()
    assert "--embeddings" not in spawn.argv and "--reranking" not in spawn.argv, "a completion runner"
    # The reranker's running runner serves its tokenize: no other runner starts.
    results(rerank(rsup, top_n=1))
    assert len(rsup.spawns()) == 2
    r = rsup.post("/engines/tokenize", {"model": RERANKER, "content": "hello world paris"})
    assert r.status_code == 200, r.text
    r = rsup.post("/engines/detokenize", {"model": RERANKER, "tokens": r.json()["tokens"]})
    assert r.status_code == 200 and r.json()["content"].strip() == "hello world paris", r.text
    assert len(rsup.spawns()) == 2, [s.argv for s in rsup.spawns()]


@pytest.mark.parametrize("path,body,status,says", [
    ("/rerank", {"model": RERANKER, "documents": ["a"]}, 400, '"query" is required'),
    ("/rerank", {"model": RERANKER, "query": 3, "documents": ["a"]}, 400, '"query" must be a string'),
    ("/v1/rerank", {"model": RERANKER, "query": "q", "documents": []}, 400, '"documents" must not be empty'),
    ("/v1/rerank", {"model": RERANKER, "query": "q"}, 400, '"documents" is required'),
    ("/rerank", {"model": RERANKER, "query": "q", "documents": ["a", {"text": "b"}]}, 400, '"documents"[1] must be a string'),
    ("/rerank", {"model": RERANKER, "query": "q", "documents": ["a"], "top_n": -1}, 400, '"top_n" must be a positive integer'),
    ("/rerank", {"model": RERANKER, "query": "q", "documents": ["a"], "top_n": 0}, 400, '"top_n" must be a positive integer'),
    ("/rerank", {"query": "q", "documents": ["a"]}, 400, '"model" is required'),
    ("/rerank", {"model": "ai/nope", "query": "q", "documents": ["a"]}, 404, "not found"),
    ("/rerank", {"model": "ai/embedder", "query": "q", "documents": ["a"]}, 400, "not a reranker"),
    ("/engines/vllm/rerank", {"model": RERANKER, "query": "q", "documents": ["a"]}, 400, "served by llama.cpp, not vllm"),
    ("/engines/sglang/rerank", {"model": RERANKER, "query": "q", "documents": ["a"]}, 404, "unknown engine"),
    ("/score", {"model": RERANKER, "text_2": ["a"]}, 400, '"text_1" is required'),
    ("/score", {"model": RERANKER, "text_1": ["a", "b"], "text_2": ["a", "b", "c"]}, 400, "1:1, 1:N or N:N"),
    ("/v1/score", {"model": RERANKER, "text_1": "q", "text_2": [1]}, 400, '"text_2"[0] must be a string'),
    ("/engines/tokenize", {"content": "x"}, 400, '"model" is required'),
    ("/engines/detokenize", {"model": "ai/nope", "tokens": [1]}, 404, "not found"),
])
def test_bad_input_is_a_4xx_in_openais_envelope_and_starts_nothing(rsup, path, body, status, says):
    err = assert_openai_error(rsup.post(path, body), status)
    assert says in err["message"], err
    assert rsup.spawns() == [], "nothing is started for a bad request"


def test_malformed_json_is_400(rsup):
    status, _, body = rsup.raw("POST", "/rerank", b'{"model": "ai/reranker", "query": ')
    assert status == 400 and b'"error"' in body, (status, body)
    r = rsup.post("/no-such/rerank", {"model": RERANKER})
    assert r.status_code == 404


def test_configure_sets_the_reranking_runner_and_preloads_it(rsup):
    r = rsup.post("/engines/_configure", {"model": RERANKER, "mode": "reranking", "context-size": 256})
    assert r.status_code == 202, r.text
    assert r.json()["Mode"] == "reranking", r.json()
    [spawn] = rsup.wait_spawns(1)
    assert spawn.flag("--ctx-size") == "256" and "--reranking" in spawn.argv, spawn.argv
    wait_until(lambda: any(p["mode"] == "reranking" and not p["loading"] for p in rsup.ps()), 20, "preloaded")
    results(rerank(rsup, top_n=1))
    assert len(rsup.spawns()) == 1


def test_metrics_and_the_inspector_record_the_new_routes(rsup):
    results(rerank(rsup, top_n=2))
    assert rsup.post("/score", {"model": RERANKER, "text_1": "which", "text_2": ["a"]}).status_code == 200
    assert rsup.post("/engines/tokenize", {"model": RERANKER, "content": "hello"}).status_code == 200
    assert rsup.post("/engines/detokenize", {"model": RERANKER, "tokens": [2]}).status_code == 200

    def records():
        recs = rsup.get("/engines/requests").json()
        routes = {r["route"] for r in recs}
        return {"/v1/rerank", "/v1/score", "/tokenize", "/detokenize"} <= routes and recs
    recs = wait_until(records, 5, "a record of each route")
    rec = next(r for r in recs if r["route"] == "/v1/rerank")
    assert (rec["dialect"], rec["status"], rec["prompt"]) == ("openai", 200, QUERY), rec
    rec = next(r for r in recs if r["route"] == "/v1/score")
    assert (rec["status"], rec["prompt"]) == (200, "which"), rec
    metrics = rsup.get("/metrics").text
    for route in ["/v1/rerank", "/v1/score", "/tokenize", "/detokenize"]:
        assert f'route="{route}",dialect="openai",model="ai/reranker:latest",status="200"' in metrics, route
    assert 'mode="reranking"' in metrics


@pytest.fixture
def vrr(tmp_path) -> Path:
    """A tiny safetensors cross-encoder: vLLM's pooling runner from a `…ForSequenceClassification` architecture."""
    out = tmp_path / "vrr"
    subprocess.run([sys.executable, str(REPO / "scripts/make-tiny-safetensors-model.py"), str(out),
                    "--architecture", "BertForSequenceClassification", "--no-chat-template"],
                   check=True, capture_output=True)
    return out


def test_vllm_serves_rerank_score_and_tokenize_itself(supervisors, tmp_path, vrr):
    log = tmp_path / "vllm-starts.jsonl"
    sup = supervisors.start(
        models=[supervisors.tiny_model(), {"name": "ai/vrr", "path": str(vrr)}],
        engines={"vllm": {"binary": str(STAND_IN)}},
        env={"VLLM_STAND_IN_LOG": str(log), "VLLM_STAND_IN_DELAY": "0.2"},
    )
    r = sup.post("/engines/vllm/v1/rerank", {"model": "ai/vrr", "query": QUERY, "documents": DOCS, "top_n": 2})
    top = results(r)
    assert len(top) == 2 and top[0]["relevance_score"] >= top[1]["relevance_score"], top
    full = results(sup.post("/rerank", {"model": "ai/vrr", "query": QUERY, "documents": DOCS}))
    assert sorted(x["index"] for x in full) == list(range(len(DOCS)))
    assert [x["index"] for x in top] == [x["index"] for x in full[:2]]
    assert full[0]["document"]["text"] == DOCS[full[0]["index"]], "vLLM's own answer, passed through"
    r = sup.post("/score", {"model": "ai/vrr", "text_1": QUERY, "text_2": DOCS[:3]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    by_index = {x["index"]: x["relevance_score"] for x in full}
    assert [d["score"] for d in data] == pytest.approx([by_index[i] for i in range(3)])
    r = sup.post("/engines/vllm/tokenize", {"model": "ai/vrr", "prompt": "hello there world"})
    assert r.status_code == 200 and r.json()["count"] == 3, r.text
    r = sup.post("/engines/detokenize", {"model": "ai/vrr", "tokens": r.json()["tokens"]})
    assert r.status_code == 200 and isinstance(r.json()["prompt"], str), r.text
    ps = [p for p in sup.ps() if p["backend_name"] == "vllm"]
    assert [p["mode"] for p in ps] == ["reranking"], ps
    starts = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert len(starts) == 1, starts
    assert "--runner" not in starts[0]["argv"], "DMR adds nothing for reranking; vLLM picks its pooling runner"
    # Bad input is refused before the engine sees it, on vLLM too.
    bad = assert_openai_error(sup.post("/rerank", {"model": "ai/vrr", "query": "q", "documents": ["a"], "top_n": 0}), 400)
    assert "top_n" in bad["message"]
