"""scripts/gpu-check --dry-run: the GPU check's CPU-only parts (argument handling, the JSON + Markdown report, the
probe comparison on canned nvidia-smi output, the memory-holding engine stand-in's CLI and HTTP routes in CPU mode,
the supervisor running that stand-in and measuring it, the out-of-memory retry, the real llama-server served and
timed on CPUs), so the script cannot rot while no
GPU is lent. The GPU checks themselves only run on a machine with an NVIDIA GPU (issue 15, docs/gpu.md)."""

from __future__ import annotations

import json
import subprocess
import sys

from harness import REPO

DRY = ["probe-compare", "standin-cpu", "supervisor-standin-cpu", "oom-retry-cpu", "llama-serve-cpu"]
GPU = ["nvml", "attribution", "eviction", "oom-retry", "llama-cuda", "diffusers"]


def gpu_check(prereqs, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts/gpu-check"), "--supervisor", str(prereqs.supervisor),
                           "--gguf", str(prereqs.tiny_gguf), "--llama-server", str(prereqs.llama_server), *args], capture_output=True, text=True, timeout=180)


def test_the_dry_run_passes_and_writes_both_reports(prereqs, tmp_path):
    p = gpu_check(prereqs, "--dry-run", "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == str(tmp_path / "gpu-report.json")
    report = json.loads((tmp_path / "gpu-report.json").read_text())
    assert report["mode"] == "dry-run" and report["result"] == "pass", report
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status == {**{n: "pass" for n in DRY}, **{n: "not run" for n in GPU}}, report
    figures = {c["name"]: c["figures"] for c in report["checks"]}
    # The supervisor's measurement of the stand-in's process group is its RSS (128 MiB held, touched).
    sup = figures["supervisor-standin-cpu"]
    assert sup["measured_bytes"] >= 128 << 20, sup
    real = figures["llama-serve-cpu"]  # the real engine: measured, and timed direct and through the supervisor
    assert real["measured_bytes"] > 0 and real["tokens_per_s_direct"] > 0 and real["tokens_per_s_supervisor"] > 0, real
    assert real["engine_sandbox"].startswith("engines run ") and "no_new_privs" in real["engine_sandbox"], real
    md = (tmp_path / "gpu-report.md").read_text()
    assert md.startswith("# GPU check (dry-run)") and "result: **pass**" in md, md
    for name in DRY + GPU:
        assert f"| {name} |" in md, (name, md)


def test_bad_arguments_exit_2_with_the_reason(prereqs, tmp_path):
    p = gpu_check(prereqs, "--dry-run", "--only", "nvml", "--out", str(tmp_path))
    assert p.returncode == 2 and "unknown check(s) ['nvml']" in p.stderr, p.stderr
    p = gpu_check(prereqs, "--dry-run", "--standin-gib", "0", "--out", str(tmp_path))
    assert p.returncode == 2 and "must be positive" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, str(REPO / "scripts/gpu-check"), "--dry-run", "--supervisor",
                        str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no dmr-supervisor binary" in p.stderr, p.stderr
    assert not (tmp_path / "gpu-report.json").exists()


def test_a_failing_check_fails_the_run(prereqs, tmp_path):
    # A "supervisor" that exits at once: the checks that need it fail, the report says so, the exit status is 1.
    fake = tmp_path / "fake-supervisor"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    p = subprocess.run([sys.executable, str(REPO / "scripts/gpu-check"), "--dry-run", "--supervisor", str(fake),
                        "--gguf", str(prereqs.tiny_gguf), "--out", str(tmp_path / "out"),
                        "--only", "probe-compare,oom-retry-cpu"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    report = json.loads((tmp_path / "out/gpu-report.json").read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["probe-compare"] == "pass" and status["oom-retry-cpu"] == "fail", report
    assert "exited before listening" in [c for c in report["checks"] if c["name"] == "oom-retry-cpu"][0]["detail"]
