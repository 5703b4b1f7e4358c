"""Installing engines: `POST /engines/install-backend` and `dmr-supervisor engines install NAME` run the recipe
compiled into the binary (the same `engines/<name>/install.sh`), streaming its output; a recipe that fails says
why in one line; `/engines/status` reports each engine."""

from __future__ import annotations

import json
import os
import subprocess

from harness import REPO


def lines(r) -> list[dict]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def test_installing_llama_cpp_streams_the_recipe_and_ends_with_its_path(supervisors):
    sup = supervisors.start()
    r = sup.post("/engines/install-backend", {"backend": "llama.cpp"}, timeout=1800)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson", r.text
    out = lines(r)
    assert out[-1]["type"] == "success", out[-3:]
    path = out[-1]["message"].split(": ", 1)[1]
    assert path.endswith("/bin/llama-server") and os.access(path, os.X_OK), out[-1]
    status = sup.get("/engines/status").json()
    assert set(status) == {"llama.cpp", "vllm", "diffusers"}
    assert status["llama.cpp"].startswith("Running: ")


def test_a_recipe_that_cannot_run_here_fails_with_its_reason(supervisors):
    sup = supervisors.start()
    # vLLM needs an NVIDIA driver; this machine has none, so the recipe stops at once and says so.
    r = sup.post("/engines/install-backend", {"backend": "vllm"}, timeout=120)
    out = lines(r)
    assert out[-1]["type"] == "error" and "nvidia-smi" in out[-1]["message"], out[-3:]
    assert sup.get("/engines/status").json()["vllm"].startswith("Not Installed: ")
    r = sup.post("/engines/install-backend", {"backend": "sglang"})
    assert r.status_code == 400 and "unknown backend" in r.text
    r = sup.post("/engines/install-backend", {"backend": "vllm", "version": "v0.1"})
    assert r.status_code == 400 and "pinned version" in r.text
    assert sup.raw("POST", "/engines/install-backend", b"{nope")[0] == 400


def test_the_cli_installs_engines_too(supervisors):
    binary = str(supervisors.prereqs.supervisor)
    ok = subprocess.run([binary, "engines", "install", "llama.cpp"], capture_output=True, text=True, timeout=1800)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip().endswith("/bin/llama-server")
    bad = subprocess.run([binary, "engines", "install", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown engine" in bad.stderr
    no_gpu = subprocess.run([binary, "engines", "install", "vllm"], capture_output=True, text=True, timeout=120)
    assert no_gpu.returncode == 1 and "nvidia-smi" in no_gpu.stderr, no_gpu.stderr[-2000:]
