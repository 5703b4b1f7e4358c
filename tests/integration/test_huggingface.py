"""Hugging Face pulls (`hf.co/org/repo[:quant]`) against a local server that speaks HF's file API
(tests/hf/hf_server.py): the quantisation chosen by tag, deterministic ids from the repo's lastModified, HF_TOKEN,
errors, a cut download resumed with Range, and a safetensors repository pulled whole. The pulled GGUF is served
by the real llama-server."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import sha256_file, wait_until
from hf_repos import HfServer, lines, make_hf_root, start
from registry import FaultProxy


@pytest.fixture
def hf_root(tmp_path, supervisors) -> Path:
    return make_hf_root(tmp_path / "hf", supervisors)


def test_a_gguf_repo_gives_the_q4_k_m_file_by_default_and_another_by_tag(supervisors, hf_root):
    with HfServer(hf_root) as hf:
        sup = start(supervisors, hf.url)
        out = lines(sup.post("/models/create", {"from": "hf.co/testorg/tiny-GGUF"}, timeout=120))
        assert out[-1] == {"type": "success", "message": "Model pulled successfully"}, out[-3:]
        m = sup.get("/models/huggingface.co/testorg/tiny-gguf:latest").json()
        r = sup.post("/engines/v1/chat/completions", {"model": "hf.co/testorg/tiny-GGUF", "max_tokens": 4,
                                                     "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        # The Q4_K_M file, byte for byte, with the weights' digest as its one layer.
        weights = [p for p in (sup.store / "blobs/sha256").iterdir()
                   if sha256_file(p) == supervisors.prereqs.tiny_sha256]
        assert weights, "the Q4_K_M file is in the store"
        out = lines(sup.post("/models/create", {"from": "hf.co/testorg/tiny-GGUF:Q8_0"}, timeout=120))
        assert out[-1]["type"] == "success", out[-3:]
        other = sup.get("/models/huggingface.co/testorg/tiny-gguf:Q8_0").json()
        assert other["id"] != m["id"]
        # Another machine pulling the same repo gets the very same model id.
        again = start(supervisors, hf.url, name="again")
        assert lines(again.post("/models/create", {"from": "hf.co/testorg/tiny-GGUF"}, timeout=120))[-1]["type"] == "success"
        assert again.get("/models/huggingface.co/testorg/tiny-gguf:latest").json()["id"] == m["id"]
        r = sup.post("/models/create", {"from": "hf.co/testorg/tiny-GGUF:Q2_K"})
        assert r.status_code == 404 and "no GGUF file" in r.text, r.text
        r = sup.post("/models/create", {"from": "hf.co/testorg/missing"})
        assert r.status_code == 404, r.text
        assert not (sup.store / "hf-staging").exists() or not any((sup.store / "hf-staging").iterdir())


def test_hf_token_is_sent_and_required_when_the_repo_is_private(supervisors, hf_root):
    with HfServer(hf_root, token="hf_secret") as hf:
        sup = start(supervisors, hf.url, name="anonymous")
        r = sup.post("/models/create", {"from": "hf.co/testorg/tiny-GGUF"})
        assert r.status_code == 401 and "HF_TOKEN" in r.text, r.text
        with_env = start(supervisors, hf.url, name="env", env={"HF_TOKEN": "hf_secret"})
        assert lines(with_env.post("/models/create", {"from": "hf.co/testorg/tiny-GGUF"}, timeout=120))[-1]["type"] == "success"
        out = lines(sup.post("/models/create", {"from": "hf.co/testorg/tiny-GGUF", "bearer-token": "hf_secret"},
                             timeout=120))
        assert out[-1]["type"] == "success", out[-3:]


def test_a_cut_download_resumes_and_a_safetensors_repo_comes_whole(supervisors, hf_root):
    with HfServer(hf_root) as hf, FaultProxy(hf.url) as proxy:
        proxy.cut_after("/resolve/main/tiny-Q4_K_M.gguf", 100_000)
        sup = start(supervisors, proxy.url)
        out = lines(sup.post("/models/create", {"from": "hf.co/testorg/tiny-GGUF"}, timeout=120))
        assert out[-1]["type"] == "success", out[-3:]
        assert "bytes=100000-" in proxy.ranges, proxy.ranges
        out = lines(sup.post("/models/create", {"from": "hf.co/testorg/tiny-st"}, timeout=120))
        assert out[-1]["type"] == "success", out[-3:]
        m = sup.get("/models/huggingface.co/testorg/tiny-st:latest").json()
        assert m["config"]["format"] == "safetensors" and m["config"]["context_size"] == 2048


def test_a_declared_hf_reference_is_pulled_at_start_preloaded_and_answers_to_its_alias(supervisors, hf_root):
    with HfServer(hf_root) as hf:
        sup = supervisors.start(models=[{"from": "hf.co/testorg/tiny-GGUF", "preload": True, "aliases": ["hf-tiny"],
                                         "context_size": 512}],
                                extra=f'[registry]\nhf_endpoint = "{hf.url}"\n')
        wait_until(lambda: sup.get("/readyz").status_code == 200, 60, "the Hugging Face model pulled and loaded")
        assert [r["model_name"] for r in sup.ps()] == ["huggingface.co/testorg/tiny-gguf:latest"], sup.ps()
        m = sup.get("/models/ai/hf-tiny").json()
        assert "huggingface.co/testorg/tiny-gguf:latest" in m["tags"], m
        r = sup.post("/engines/v1/chat/completions", {"model": "hf-tiny", "max_tokens": 4,
                                                     "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert len(sup.spawns()) == 1
