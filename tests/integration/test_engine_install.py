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


def test_uninstall_backend_removes_what_install_put_in_the_data_dir_and_never_a_running_engine(supervisors, tmp_path):
    """`POST /engines/uninstall-backend`: 409 while the engine runs a model, then 404 for an engine that is not
    installed under the data directory; an installed one (its directory under `engines/`) is removed."""
    data = tmp_path / "xdg-data"
    installed = data / "dmr-supervisor" / "engines" / "diffusers"
    (installed / "bin").mkdir(parents=True)
    (installed / "bin" / "python").write_text("#!/bin/sh\n")
    sup = supervisors.start(env={"XDG_DATA_HOME": str(data)})
    assert sup.chat(max_tokens=1).status_code == 200  # llama.cpp now runs ai/tiny
    r = sup.post("/engines/uninstall-backend", {"backend": "llama.cpp"})
    assert r.status_code == 409 and "ai/tiny" in r.json()["error"]["message"], r.text
    assert sup.post("/engines/unload", {"all": True}).status_code == 200
    r = sup.post("/engines/uninstall-backend", {"backend": "llama.cpp"})
    assert r.status_code == 404 and "not installed by dmr-supervisor" in r.text, r.text
    assert sup.chat(max_tokens=1).status_code == 200, "the configured binary is the operator's: still there"
    r = sup.post("/engines/uninstall-backend", {"backend": "diffusers"})
    assert r.status_code == 200 and "removed" in r.json()["message"], r.text
    assert not installed.exists() and (data / "dmr-supervisor" / "engines").exists()
    assert sup.post("/engines/uninstall-backend", {"backend": "diffusers"}).status_code == 404
    assert sup.post("/engines/uninstall-backend", {"backend": "nope"}).status_code == 400
    assert sup.post("/engines/uninstall-backend", {"backend": "vllm", "x": 1}).status_code == 400
    # The command line does the same through the daemon.
    (installed / "bin").mkdir(parents=True)
    cli = [str(supervisors.prereqs.supervisor), "--host", f"http://127.0.0.1:{sup.port}", "engines", "uninstall"]
    done = subprocess.run([*cli, "diffusers"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "uninstalled diffusers" in done.stdout, (done.stdout, done.stderr)
    assert not installed.exists()
    again = subprocess.run([*cli, "diffusers"], capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "not installed by dmr-supervisor" in again.stderr, (again.stdout, again.stderr)
