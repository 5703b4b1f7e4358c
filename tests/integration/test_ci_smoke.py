"""scripts/ci-smoke.sh, the CI recipe users drop into their pipelines, run as they would run it."""

from __future__ import annotations

import os
import subprocess

from harness import REPO


def run(prereqs, *args):
    env = {**os.environ, "DMR_SUPERVISOR_BIN": str(prereqs.supervisor), "DMR_LLAMA_SERVER": str(prereqs.llama_server)}
    return subprocess.run([str(REPO / "scripts/ci-smoke.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_the_smoke_recipe_passes_on_smollm2(prereqs):
    # The steps of DMR's workflow (run, "Say hello", rm, ls) on the real model it uses; the tiny random model cannot
    # greet.
    p = run(prereqs, str(prereqs.smollm2_gguf))
    assert p.returncode == 0, p.stdout + p.stderr
    steps = [line[3:] for line in p.stdout.splitlines() if line.startswith("== ")]
    assert steps == ["install", "start", "version", "import the model", "run it (60 s timeout)", "API: Say hello",
                     "stream (OpenAI SSE)", "Ollama and Anthropic APIs", "running engines", "rm and ls",
                     "stop"], p.stdout
    assert "hello" in p.stdout.split("== API: Say hello", 1)[1].lower()
    assert p.stdout.rstrip().endswith("smoke test passed")


def test_the_smoke_recipe_fails_clearly(prereqs, tmp_path):
    p = run(prereqs, str(tmp_path / "missing.gguf"))
    assert p.returncode != 0 and "FAILED: no model file at" in p.stderr, p.stdout + p.stderr
