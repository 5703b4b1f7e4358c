"""The command line (`dmr-supervisor pull|push|tag|package|ls|rm|inspect|ps|unload|configure|logs|status|run`),
run as the real binary against a running daemon: progress ends with a 100 % line, `run` streams, `run` without a
prompt chats over stdin, and every failure is one `error:` line with a non-zero exit."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from registry import Registry, get_manifest


def cli(supervisors, sup, *args: str, input: str | None = None, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(supervisors.prereqs.supervisor), "--host", f"http://127.0.0.1:{sup.port}", *args],
                          capture_output=True, text=True, input=input, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr[-2000:]}"
    return p.stdout


def failed(p: subprocess.CompletedProcess, why: str) -> None:
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], p.stderr


def test_status_ls_inspect_and_rm(supervisors):
    sup = supervisors.start()
    out = ok(cli(supervisors, sup, "status"))
    assert "is running" in out and "llama.cpp: Running" in out
    table = ok(cli(supervisors, sup, "ls")).splitlines()
    assert table[0].split()[:2] == ["MODEL", "NAME"] and table[1].startswith("ai/tiny:latest")
    assert ok(cli(supervisors, sup, "ls", "-q")).strip() == sup.get("/models").json()[0]["id"][7:19]
    assert '"format": "gguf"' in ok(cli(supervisors, sup, "inspect", "ai/tiny"))
    failed(cli(supervisors, sup, "rm", "ai/nope"), "not found")
    ok(cli(supervisors, sup, "tag", "ai/tiny", "ai/tiny:second"))
    assert "Untagged: ai/tiny:second" in ok(cli(supervisors, sup, "rm", "ai/tiny:second"))
    failed(subprocess.run([str(supervisors.prereqs.supervisor), "--host", "http://127.0.0.1:1", "ls"],
                          capture_output=True, text=True, timeout=30), "cannot reach dmr-supervisor")


def test_run_streams_an_answer_and_chats_over_stdin(supervisors):
    sup = supervisors.start()
    out = ok(cli(supervisors, sup, "run", "--max-tokens", "8", "ai/tiny", "Say hi"))
    assert out.strip(), "an answer"
    assert "ai/tiny:latest" in ok(cli(supervisors, sup, "ps"))
    chat = ok(cli(supervisors, sup, "run", "--max-tokens", "8", "ai/tiny", input="hello\nand again\n/bye\nnever sent\n"))
    assert len([l for l in chat.splitlines() if l.strip()]) >= 2, chat
    logged = [r for r in sup.get("/engines/requests").json() if r.get("model", "").startswith("ai/tiny")]
    assert len(logged) == 3, logged  # one prompt, then two chat turns; neither /bye nor the line after it is sent
    # /bye itself ends the chat: with stdin still open (no end of input), the command exits at once.
    p = subprocess.Popen([str(supervisors.prereqs.supervisor), "--host", f"http://127.0.0.1:{sup.port}", "run",
                          "--max-tokens", "2", "ai/tiny"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        p.stdin.write("hello\n/bye\n")
        p.stdin.flush()
        assert p.wait(timeout=60) == 0, p.stderr.read()
    finally:
        p.kill()
        p.wait()
        p.stdin.close()
    assert len([r for r in sup.get("/engines/requests").json() if r.get("model", "").startswith("ai/tiny")]) == 4
    assert "Unloaded 1" in ok(cli(supervisors, sup, "unload", "--all"))
    failed(cli(supervisors, sup, "run", "ai/nope", "x"), "not found")


def test_package_from_a_model_sets_its_context_and_purge_asks_first(supervisors):
    sup = supervisors.start()
    out = ok(cli(supervisors, sup, "package", "--from", "ai/tiny", "--context-size", "2048", "ai/tiny-2k"))
    assert out.strip() == 'Model repackaged successfully as "ai/tiny-2k:latest"'
    assert sup.get("/models/ai/tiny-2k").json()["config"]["context_size"] == 2048
    # A GGUF packaged with a context size: imported, then repackaged onto its own name (no second model left).
    out = ok(cli(supervisors, sup, "package", "--gguf", str(supervisors.prereqs.tiny_gguf), "--context-size", "1024",
                 "ai/tiny-1k"))
    assert out.strip().splitlines()[-1] == 'Model repackaged successfully as "ai/tiny-1k:latest"'
    assert sup.get("/models/ai/tiny-1k").json()["config"]["context_size"] == 1024
    assert len(sup.get("/models").json()) == 3
    failed(cli(supervisors, sup, "package", "--from", "ai/nope", "ai/x"), "not found")
    p = cli(supervisors, sup, "purge", input="n\n")
    assert p.returncode == 1 and p.stderr.splitlines() == ["This deletes every model in the store. Continue? [y/N] ",
                                                           "error: purge cancelled"], p.stderr
    assert len(sup.get("/models").json()) == 3
    assert ok(cli(supervisors, sup, "purge", input="y\n")).strip() == "Purged: 3 model(s) deleted"
    assert sup.get("/models").json() == []
    assert ok(cli(supervisors, sup, "purge", "--force")).strip() == "Purged: 0 model(s) deleted"


def test_configure_persists_settings(supervisors):
    sup = supervisors.start()
    ok(cli(supervisors, sup, "configure", "--context-size", "1024", "ai/tiny", "--", "--temp", "0.5"))
    [c] = sup.get("/engines/_configure?model=ai/tiny").json()
    assert c["Config"] == {"context-size": 1024, "runtime-flags": ["--temp", "0.5"]}
    failed(cli(supervisors, sup, "configure", "ai/tiny", "--", "--log-file", "/etc/x"), "may not carry paths")
    assert "listening" in ok(cli(supervisors, sup, "logs"))


def test_pull_and_push_show_progress_to_100_percent(supervisors, tmp_path):
    with Registry(tmp_path / "registry") as reg:
        a = supervisors.start(name="a")
        target = f"{reg.host}/cli/tiny:v1"
        ok(cli(supervisors, a, "tag", "ai/tiny", target))
        p = cli(supervisors, a, "push", target)
        assert ok(p).strip() == "Model pushed successfully"
        assert p.stderr.strip().splitlines()[-1].startswith("Uploaded: 100%"), p.stderr
        get_manifest(reg, "cli/tiny", "v1")

        b = supervisors.start(name="b", models=[])
        p = cli(supervisors, b, "pull", target)
        assert ok(p).strip() == "Model pulled successfully"
        assert p.stderr.strip().splitlines()[-1].startswith("Downloaded: 100%"), p.stderr
        assert target in ok(cli(supervisors, b, "ls"))
        failed(cli(supervisors, b, "pull", f"{reg.host}/cli/missing:v1"), "not found")

        # package: a local GGUF with a license and a chat template under a registry name, pushed in one go, with
        # DMR's layer types in DMR's order.
        (tmp_path / "LICENSE").write_text("MIT\n")
        (tmp_path / "template.jinja").write_text("{{ messages }}")
        p = cli(supervisors, b, "package", "--gguf", str(supervisors.prereqs.tiny_gguf), "--license",
                str(tmp_path / "LICENSE"), "--chat-template", str(tmp_path / "template.jinja"),
                f"{reg.host}/cli/packaged:v2", "--push")
        assert ok(p).strip().splitlines()[-1] == "Model pushed successfully", p.stdout
        manifest, _ = get_manifest(reg, "cli/packaged", "v2")
        assert [l["mediaType"] for l in manifest["layers"]] == [
            "application/vnd.docker.ai.gguf.v3", "application/vnd.docker.ai.license",
            "application/vnd.docker.ai.chat.template.jinja"]
        # And it pulls back into an empty store and serves.
        c = supervisors.start(name="c", models=[])
        assert ok(cli(supervisors, c, "pull", f"{reg.host}/cli/packaged:v2")).strip() == "Model pulled successfully"
        # Sampling is not pinned for this model (no --temp 0), so a tiny random model may well answer whitespace:
        # what is checked is that the engine was started on the pulled GGUF and the request was answered.
        ok(cli(supervisors, c, "run", "--max-tokens", "4", f"{reg.host}/cli/packaged:v2", "hi"))
        assert f"{reg.host}/cli/packaged:v2" in ok(cli(supervisors, c, "ps"))
        [logged] = [r for r in c.get("/engines/requests").json() if r.get("model", "").endswith("cli/packaged:v2")]
        assert logged["status"] == 200 and logged["complete"], logged


def with_import_roots(cfg: Path, roots: list[str]) -> None:
    """Sets `[store] import_roots` in a written config to exactly `roots`, whatever the harness put there."""
    lines = [l for l in cfg.read_text().splitlines() if not l.strip().startswith("import_roots")]
    lines.insert(lines.index("[store]") + 1, f"import_roots = {json.dumps(roots)}")
    cfg.write_text("\n".join(lines) + "\n")


def blobs(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "blobs/sha256").iterdir())


def test_package_uploads_to_a_daemon_that_reads_no_server_paths(supervisors, tmp_path):
    """`package --gguf` reads the files on the client and uploads the model as an archive to `POST /models/load`:
    it works against a daemon with no `import_roots`, which refuses the very same file given as a server path. The
    model gets the id a server-side import of the same files gives, carries its license and chat template, and
    serves through the real llama-server; the client's temporary store is gone afterwards."""
    gguf = supervisors.prereqs.tiny_gguf
    files = tmp_path / "client"
    files.mkdir()
    (files / "LICENSE").write_text("MIT, from the client\n")
    template = ("You are a careful assistant who answers briefly. " * 40
                + "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")
    (files / "template.jinja").write_text(template)
    cfg, store, log = supervisors.write_config(name="noroots", models=[])
    with_import_roots(cfg, [])
    sup = supervisors.start_with(cfg, store, log)

    # A server path is refused by this daemon, and leaves nothing in its store.
    for body in ({"from": str(gguf), "name": "ai/by-path"},
                 {"from": str(gguf), "name": "ai/by-path", "license": str(files / "LICENSE")}):
        r = sup.post("/models/create", body)
        assert r.status_code == 403, (r.status_code, r.text)
        assert "MIT, from the client" not in r.text and "GGUF" not in r.text, r.text
    assert sup.get("/models").json() == [] and blobs(store) == []

    client_tmp = tmp_path / "client-tmp"
    client_tmp.mkdir()
    p = cli(supervisors, sup, "package", "--gguf", str(gguf), "--license", str(files / "LICENSE"),
            "--chat-template", str(files / "template.jinja"), "cli/uploaded:v1", env={"TMPDIR": str(client_tmp)})
    out = ok(p).strip().splitlines()
    model = sup.get("/models/cli/uploaded:v1").json()
    assert out[-1] == f'Model packaged successfully as "cli/uploaded:v1": {model["id"]}', out
    assert p.stderr.strip().splitlines()[-1].startswith("Uploaded: 100%"), p.stderr
    assert list(client_tmp.iterdir()) == [], "the client's temporary store is removed"
    plain = ok(cli(supervisors, sup, "package", "--gguf", str(gguf), "cli/plain", env={"TMPDIR": str(client_tmp)}))
    plain_id = sup.get("/models/cli/plain").json()["id"]
    assert plain.strip().splitlines()[-1] == f'Model packaged successfully as "cli/plain:latest": {plain_id}'
    assert list(client_tmp.iterdir()) == []

    # The license and the chat template arrived as DMR's layers, byte for byte; nothing else is in the store.
    r = sup.get("/models/cli/uploaded:v1/export")
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        layer = {l["mediaType"]: tar.extractfile(f"blobs/sha256/{l['digest'][7:]}").read()
                 for l in manifest["layers"]}
    assert list(layer) == ["application/vnd.docker.ai.gguf.v3", "application/vnd.docker.ai.license",
                           "application/vnd.docker.ai.chat.template.jinja"]
    assert layer["application/vnd.docker.ai.gguf.v3"] == gguf.read_bytes()
    assert layer["application/vnd.docker.ai.license"] == b"MIT, from the client\n"
    assert layer["application/vnd.docker.ai.chat.template.jinja"] == template.encode()
    # Three layers and a config for the packaged model; the plain one shares the weights and has its own config.
    assert len(blobs(store)) == 5, blobs(store)

    # It serves through the real llama-server, with the packaged template.
    r = sup.chat("cli/uploaded:v1", max_tokens=4)
    assert r.status_code == 200, r.text
    [spawn] = [s for s in sup.spawns() if "--chat-template-file" in s.argv]
    assert Path(spawn.argv[spawn.argv.index("--chat-template-file") + 1]).read_text() == template
    assert sup.chat("cli/plain", max_tokens=4).status_code == 200

    # The ids are those a server-side import of the same files gives (on a daemon allowed to read them).
    ref_cfg, ref_store, ref_log = supervisors.write_config(name="withroots")
    with_import_roots(ref_cfg, [str(files), str(gguf.parent)])
    ref = supervisors.start_with(ref_cfg, ref_store, ref_log)
    assert ref.get("/models/ai/tiny").json()["id"] == plain_id
    r = ref.post("/models/create", {"from": str(gguf), "name": "ai/by-path", "license": str(files / "LICENSE"),
                                    "chat_template": str(files / "template.jinja")})
    assert r.status_code == 200 and json.loads(r.text.strip().splitlines()[-1])["type"] == "success", r.text
    assert ref.get("/models/ai/by-path").json()["id"] == model["id"]

    # A file that is not there fails on the client, before anything is sent; so does a TMPDIR that is not there
    # (the temporary store goes where TMPDIR says).
    failed(cli(supervisors, sup, "package", "--gguf", str(files / "nope.gguf"), "cli/nope"), "nope.gguf")
    failed(cli(supervisors, sup, "package", "--gguf", str(gguf), "cli/nope", env={"TMPDIR": str(files / "no-dir")}),
           "cannot make a temporary store")
    assert sup.get("/models/cli/nope").status_code == 404
    # `pull` of a local path says to package it, and sends nothing the daemon would read as its own path.
    failed(cli(supervisors, sup, "pull", str(gguf)), "package --gguf")
    assert len(blobs(store)) == 5 and len(sup.get("/models").json()) == 2
    assert len(blobs(store)) == 5


def test_bench_measures_each_level_beside_the_engines_own_rate(supervisors, sup):
    r = cli(supervisors, sup, "bench", "ai/tiny", "--tokens", "16", "--concurrency", "1,2", "--requests", "2",
            "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["model"] == "ai/tiny" and doc["tokens"] == 16
    assert [l["concurrency"] for l in doc["levels"]] == [1, 2]
    for level in doc["levels"]:
        assert level["requests"] == 2
        assert 0 < level["ttft_ms_p50"] <= level["ttft_ms_p90"]
        assert level["tokens_per_s_p50"] > 0 and level["total_tokens_per_s"] > 0
        assert level["engine_tokens_per_s_p50"] > 0, "llama-server reports its own rate"
    table = cli(supervisors, sup, "bench", "ai/tiny", "--tokens", "8", "--concurrency", "1", "--requests", "1")
    assert table.returncode == 0 and "| 1 | 1 |" in table.stdout, table.stdout
    unknown = cli(supervisors, sup, "bench", "ai/nope")
    assert unknown.returncode != 0 and "ai/nope" in unknown.stderr, unknown.stderr
