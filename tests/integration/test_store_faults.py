"""The store on a full disk and on a read-only one: an import or a registry pull fails with a clear error, the store is
left exactly as it was (no partial blob, no `*.incomplete` file, the index unchanged), and the models already there
keep serving.

The daemon runs in its own mount namespace (`unshare -m`) with the store on a small tmpfs: a real ENOSPC, and a
real EROFS after `mount -o remount,ro` (the tests run as root, for whom `chmod` does not stop writes)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness import Supervisor
from registry import Registry, push_dmr_gguf_model

MOUNT = 'mount -t tmpfs -o size="$1" tmpfs "$0" && shift && exec "$@"'


def store_on_tmpfs(store: Path, size: str) -> list[str]:
    store.mkdir(parents=True, exist_ok=True)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", MOUNT, str(store), size]


def in_namespace(sup: Supervisor, *argv: str) -> str:
    """Runs argv in the daemon's mount namespace, where its store is mounted."""
    return subprocess.run(["nsenter", "-t", str(sup.proc.pid), "-m", *argv], check=True, capture_output=True,
                          text=True).stdout


def store_files(sup: Supervisor) -> dict[str, str]:
    """Every file in the store (as the daemon sees it) with its size and sha256."""
    out = in_namespace(sup, "sh", "-c", 'cd "$0" && find . -type f -exec sha256sum {} + | sort -k2', str(sup.store))
    return {path: digest for digest, path in (line.split() for line in out.splitlines())}


def import_lines(sup: Supervisor, path: Path, name: str) -> list[dict]:
    r = sup.post("/models/create", {"from": str(path), "name": name})
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def names(sup: Supervisor) -> list[str]:
    return sorted(t for m in sup.get("/models").json() for t in m["tags"])


def check_unchanged(sup: Supervisor, before: dict[str, str]) -> None:
    after = store_files(sup)
    assert after == before, f"store changed: {sorted(set(after) ^ set(before))}"
    assert not [p for p in after if p.endswith(".incomplete")]
    assert names(sup) == ["ai/tiny:latest"]
    r = sup.chat(max_tokens=2)
    assert r.status_code == 200, r.text


def test_an_import_onto_a_full_disk_fails_clearly_and_leaves_the_store_as_it_was(supervisors, tmp_path):
    store = tmp_path / "store"
    # Room for the configured model (484 KB) and its index, not for a second one.
    sup = supervisors.start(store=store, launcher=store_on_tmpfs(store, "768k"))
    before = store_files(sup)
    assert any(p.startswith("./blobs/") for p in before), before
    other = Path(supervisors.other_tiny_model()["gguf"])
    lines = import_lines(sup, other, "ai/tiny2")
    assert lines[-1]["type"] == "error" and "No space left on device" in lines[-1]["message"], lines[-1]
    check_unchanged(sup, before)
    assert "No space left on device" in sup.stderr_text()


def test_a_read_only_store_refuses_imports_and_deletes_clearly_and_keeps_serving(supervisors, tmp_path):
    store = tmp_path / "store"
    sup = supervisors.start(store=store, launcher=store_on_tmpfs(store, "16m"))
    before = store_files(sup)
    in_namespace(sup, "mount", "-o", "remount,ro", str(store))
    other = Path(supervisors.other_tiny_model()["gguf"])
    lines = import_lines(sup, other, "ai/tiny2")
    assert lines[-1]["type"] == "error" and "Read-only file system" in lines[-1]["message"], lines[-1]
    r = sup.delete("/models/ai/tiny")
    assert 500 <= r.status_code < 600 and "Read-only file system" in r.text, (r.status_code, r.text)
    check_unchanged(sup, before)
    # Once the disk is writable again, the same import succeeds.
    in_namespace(sup, "mount", "-o", "remount,rw", str(store))
    assert import_lines(sup, other, "ai/tiny2")[-1]["type"] == "success"
    assert names(sup) == ["ai/tiny2:latest", "ai/tiny:latest"]


def test_a_pull_onto_a_full_disk_fails_clearly_and_keeps_no_partial_layer(supervisors, tmp_path):
    """The disk fills up midway through a layer: the pull ends with an error line naming ENOSPC, the partial layer
    is removed (unlike a network cut, nothing there can be resumed), and once space is freed the same pull works."""
    other = Path(supervisors.other_tiny_model()["gguf"])
    with Registry(tmp_path / "registry") as reg:
        push_dmr_gguf_model(reg, "test/other", "v1", other.read_bytes())
        store = tmp_path / "store"
        sup = supervisors.start(store=store, launcher=store_on_tmpfs(store, "768k"))
        before = store_files(sup)
        r = sup.post("/models/create", {"from": f"{reg.host}/test/other:v1"}, timeout=120)
        lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
        assert lines[-1]["type"] == "error" and "No space left on device" in lines[-1]["message"], lines[-1]
        assert ".incomplete: No space left" in lines[-1]["message"]  # writing the layer failed, not a check up front
        check_unchanged(sup, before)
        # Room again (a bigger tmpfs over the same path): the pull succeeds from scratch.
        in_namespace(sup, "mount", "-o", "remount,size=4m", str(store))
        r = sup.post("/models/create", {"from": f"{reg.host}/test/other:v1"}, timeout=120)
        assert r.text.splitlines()[-1] == '{"type":"success","message":"Model pulled successfully"}', r.text[-500:]
        assert names(sup) == [f"{reg.host}/test/other:v1", "ai/tiny:latest"]
