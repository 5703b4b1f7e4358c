"""Image models run on the diffusers runner (engines/diffusers/runner.py) with real torch and diffusers: a tiny
random Stable Diffusion pipeline (scripts/make-tiny-diffusers.py), imported from its directory and as a .dduf
file, generates real PNGs of the requested size through the supervisor; the runner's own errors reach the client
in OpenAI's shape; and image models and text models each refuse the other's routes.

DMR_DIFFUSERS_PYTHON names a Python with the runner's requirements (scripts/test.sh installs them with
engines/diffusers/install.sh)."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
from pathlib import Path

import pytest

from harness import REPO, wait_until

RUNNER = REPO / "engines/diffusers/runner.py"


@pytest.fixture(scope="module")
def python() -> str:
    py = os.environ.get("DMR_DIFFUSERS_PYTHON")
    if not py:
        pytest.fail("DMR_DIFFUSERS_PYTHON is not set: run scripts/test.sh, which installs the diffusers runner",
                    pytrace=False)
    return py


@pytest.fixture(scope="module")
def pipeline(python, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipe") / "tiny-sd"
    subprocess.run([python, str(REPO / "scripts/make-tiny-diffusers.py"), str(out), "--dduf"], check=True,
                   capture_output=True, timeout=300)
    return out


def png_size(b64: str) -> tuple[int, int]:
    png = base64.b64decode(b64)
    assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:16]
    return struct.unpack(">II", png[16:24])


def start(supervisors, python, path: Path, name: str = "ai/tiny-sd", sandbox: dict | None = None):
    return supervisors.start(
        models=[supervisors.tiny_model(), {"name": name, "path": str(path)}],
        engines={"diffusers": {"python": python, "runner": str(RUNNER)}},
        scheduler={"startup_timeout": "180s"},
        sandbox=sandbox,
    )


def test_a_pipeline_directory_generates_pngs_of_the_requested_size(supervisors, python, pipeline):
    sup = start(supervisors, python, pipeline)
    body = {"model": "ai/tiny-sd", "prompt": "a red square", "size": "64x48", "n": 2, "seed": 7,
            "num_inference_steps": 2, "guidance_scale": 1.0}
    r = sup.post("/v1/images/generations", body, timeout=300)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 2 and all(png_size(d["b64_json"]) == (64, 48) for d in data)
    # The same seed gives the same image, through the engine-prefixed route too.
    again = sup.post("/engines/diffusers/v1/images/generations", {**body, "n": 1}, timeout=300)
    assert again.status_code == 200, again.text
    assert again.json()["data"][0]["b64_json"] == data[0]["b64_json"]
    # Image requests are recorded by the inspector and counted under their own route.
    def images():
        recs = sup.get("/engines/requests").json()
        return [x for x in recs if x["route"] == "/v1/images/generations"]
    recs = wait_until(lambda: len(images()) >= 2 and images(), 5, "2 image records")
    assert {(x["model"], x["dialect"], x["status"], x["prompt"]) for x in recs} == \
        {("ai/tiny-sd:latest", "openai", 200, "a red square")}, recs
    metrics = sup.get("/metrics").text
    assert 'route="/v1/images/generations"' in metrics and 'route="other"' not in metrics
    [ps] = sup.ps()
    assert ps["backend_name"] == "diffusers" and ps["mode"] == "image-generation"
    assert sup.get("/models/ai/tiny-sd").json()["config"]["format"] == "diffusers"
    # The runner's validation errors come back as they are, in OpenAI's shape.
    r = sup.post("/v1/images/generations", {"model": "ai/tiny-sd", "prompt": "x", "size": "63x48"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "size", r.text
    r = sup.post("/v1/images/generations", {"model": "ai/tiny-sd", "prompt": ""})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    # An image model has no chat, and a text model draws no images.
    r = sup.post("/v1/chat/completions", {"model": "ai/tiny-sd", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and "image model" in r.json()["error"]["message"], r.text
    r = sup.post("/v1/images/generations", {"model": "ai/tiny", "prompt": "x"})
    assert r.status_code == 400 and "cannot generate images" in r.json()["error"]["message"], r.text
    r = sup.post("/engines/llama.cpp/v1/images/generations", {"model": "ai/tiny-sd", "prompt": "x"})
    assert r.status_code == 400, r.text


def test_a_dduf_file_is_served_too(supervisors, python, pipeline):
    dduf = pipeline.with_suffix(".dduf")
    assert dduf.is_file()
    sup = start(supervisors, python, dduf, name="ai/tiny-sd-dduf")
    r = sup.post("/v1/images/generations", {"model": "ai/tiny-sd-dduf", "prompt": "a cat", "size": "32x32",
                                            "num_inference_steps": 1, "seed": 1}, timeout=300)
    assert r.status_code == 200, r.text
    assert png_size(r.json()["data"][0]["b64_json"]) == (32, 32)
    assert sup.get("/models/ai/tiny-sd-dduf").json()["config"]["format"] == "dduf"


def test_the_runner_draws_in_the_sandbox_with_no_allowance_beyond_its_own(supervisors, python, pipeline):
    """No `sandbox_read`/`sandbox_write`: the runner reads only its venv, its base interpreter's prefix, its own
    directory, the model's bundle and the system's libraries, and writes only its private directory."""
    sup = start(supervisors, python, pipeline.with_suffix(".dduf"), name="ai/tiny-sd-dduf", sandbox={})
    r = sup.post("/v1/images/generations", {"model": "ai/tiny-sd-dduf", "prompt": "a cat", "size": "32x32",
                                            "num_inference_steps": 1, "seed": 1}, timeout=300)
    assert r.status_code == 200, r.text + "\n" + sup.diagnostics()
    assert png_size(r.json()["data"][0]["b64_json"]) == (32, 32)
    def cmdline(p: Path) -> bytes:
        try:
            return (p / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            return b""
    runners = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(RUNNER).encode() in cmdline(p)]
    assert runners, "no runner process"
    status = dict(line.split(":", 1) for line in (runners[0] / "status").read_text().splitlines() if ":" in line)
    assert status["NoNewPrivs"].strip() == "1" and int(status["CapEff"], 16) == 0, status
