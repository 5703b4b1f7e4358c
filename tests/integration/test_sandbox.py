"""Engines in a sandbox (issue 18, item 7), against the real binary: a test engine (`sandbox/prober.py`, started as
llama.cpp's binary) tries what it must not do before it serves, and answers chats with what happened. Run as the
configured user it reads its own model and install tree, writes its private directory, and every other attempt
fails (EACCES/EPERM): a secret file, the store's index, another model's weights, writing the store, /tmp or its
own tree, /etc/shadow, setuid(0), signalling the supervisor. Root without `[engines] user` keeps uid 0 with no
capability; the sandbox off is the control case (the same engine reads the secret). The real llama-server then
serves a chat as the unprivileged user.

The pytest directories are 0700 under root's, which an unprivileged user cannot walk (Landlock grants nothing the
file modes refuse), so each test builds its world in a 0755 directory of /tmp. The user is `nobody`, on every
Debian machine."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

PROBER = Path(__file__).parent / "sandbox" / "prober.py"
USER = "nobody"

ALLOWED = ["read_own_model", "read_own_tree", "read_system_library", "write_private_dir", "write_dev_null"]
FORBIDDEN = ["read_secret", "read_store_index", "read_other_model", "list_store_blobs", "write_store",
             "overwrite_own_model", "write_tmp", "write_own_tree", "write_shared", "read_shadow", "signal_supervisor",
             "read_supervisor_environ"]


def landlock_abi() -> int:
    """The kernel's Landlock ABI (landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)); 0: none."""
    libc = ctypes.CDLL(None, use_errno=True)
    v = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint(1))
    return max(v, 0)


def needs_landlock(sup) -> int:
    """The kernel's Landlock ABI. On a kernel without Landlock the walls cannot be built: the daemon must say so in
    one line (checked here), and the test that needs them is skipped with that reason."""
    abi = landlock_abi()
    if abi == 0:
        assert "not confined to their files: this kernel has no Landlock" in sup.stderr_text()
        pytest.skip("this kernel has no Landlock: engines run with no_new_privs only, as the daemon's log says")
    return abi


@pytest.fixture
def world():
    """A directory every user can walk: the prober's install tree (bin/prober, share/data.txt), room for the store,
    and a world-readable secret that only the sandbox keeps from the engine."""
    if os.geteuid() != 0:
        pytest.fail("the sandbox tests run the supervisor as root (sudo, or the CI container)", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="dmr-sandbox-", dir="/tmp"))
    base.chmod(0o755)
    (base / "engine/bin").mkdir(parents=True)
    (base / "engine/share").mkdir()
    shutil.copy(PROBER, base / "engine/bin/prober")
    (base / "engine/bin/prober").chmod(0o755)
    (base / "engine/share/data.txt").write_text("the engine's own data\n")
    (base / "secret.txt").write_text("nobody should read this\n")
    (base / "secret.txt").chmod(0o644)
    (base / "shared").mkdir()
    (base / "shared").chmod(0o777)
    yield base
    shutil.rmtree(base, ignore_errors=True)
    for escaped in Path("/tmp").glob("dmr-sandbox-escape-*"):  # written by the control case, the sandbox off
        escaped.unlink()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start(supervisors, world: Path, sandbox: dict, engine_binary: str | None = None, store: str = "store",
          **tiny):
    other = supervisors.other_tiny_model()
    env = {"PROBE_SECRET": str(world / "secret.txt"), "PROBE_OTHER_BLOB": sha256(Path(other["gguf"])),
           "PROBE_SHARED": str(world / "shared"),
           # The supervisor's credentials: engines never inherit them.
           "HF_TOKEN": "hf_supervisor_only", "HUGGING_FACE_HUB_TOKEN": "hf_supervisor_only"}
    return supervisors.start(models=[supervisors.tiny_model(**tiny), other], store=world / store, sandbox=sandbox,
                             engine_binary=engine_binary or str(world / "engine/bin/prober"), env=env)


def probe(sup) -> dict:
    r = sup.chat()
    assert r.status_code == 200, r.text + "\n" + sup.diagnostics()
    return json.loads(r.json()["choices"][0]["message"]["content"])


def engine_pids(binary: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "exe")) == binary:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def status_field(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def test_an_engine_run_as_the_configured_user_reads_only_its_files_and_cannot_escalate(world, supervisors):
    sup = start(supervisors, world, {"user": USER})
    abi = needs_landlock(sup)
    got = probe(sup)
    nobody = pwd.getpwnam(USER)
    assert (got["uid"], got["euid"], got["gid"]) == (nobody.pw_uid, nobody.pw_uid, nobody.pw_gid), got
    assert got["groups"] in ([], [nobody.pw_gid]), got
    assert got["no_new_privs"] == "1", got
    assert int(got["cap_eff"], 16) == 0, got
    assert got["inherited_secrets"] == [], got
    for action in ALLOWED:
        assert got[action] == "ok", (action, got)
    for action in FORBIDDEN + ["setuid_root"]:
        assert got[action] in ("EACCES", "EPERM"), (action, got)
    # The private directory: TMPDIR, HOME and the working directory, the user's own, gone once the engine is.
    private = Path(got["tmpdir"])
    assert got["home"] == got["cwd"] == str(private) and private.name.startswith("dmr-engine-"), got
    assert private.stat().st_uid == nobody.pw_uid and (private / "scratch").exists()
    assert not (world / "store/planted").exists() and not (world / "engine/bin/planted").exists()
    # What the kernel supports is said once at start-up.
    assert f"confined by Landlock (ABI {abi})" in sup.stderr_text(), sup.stderr_text()[-3000:]
    assert f"engines run as {USER} (uid {nobody.pw_uid})" in sup.stderr_text()
    sup.stop()
    assert not private.exists(), "the private directory outlived its engine"


def test_root_without_a_user_keeps_uid_0_with_no_capability_and_the_same_walls(world, supervisors):
    sup = start(supervisors, world, {})
    needs_landlock(sup)
    got = probe(sup)
    assert (got["uid"], got["euid"]) == (0, 0), got
    assert int(got["cap_eff"], 16) == 0 and int(got["cap_bnd"], 16) == 0, got
    assert got["no_new_privs"] == "1", got
    for action in ALLOWED:
        assert got[action] == "ok", (action, got)
    # Root's file modes would allow all of these: Landlock refuses them.
    for action in FORBIDDEN:
        assert got[action] in ("EACCES", "EPERM"), (action, got)
    assert "set [engines] user to run engines as an unprivileged user" in sup.stderr_text()


def test_with_the_sandbox_off_the_same_engine_reads_the_secret_and_the_store(world, supervisors):
    sup = start(supervisors, world, {"sandbox": False, "user": USER})
    got = probe(sup)
    assert got["uid"] == 0 and got["no_new_privs"] == "0", got
    for action in ["read_secret", "read_store_index", "read_other_model", "list_store_blobs", "read_supervisor_environ"]:
        assert got[action] == "ok", (action, got)
    assert "engines run unconfined ([engines] sandbox = false)" in sup.stderr_text()


def test_a_killed_supervisor_s_private_directories_are_removed_by_the_next_one(world, supervisors):
    sup = start(supervisors, world, {"user": USER})
    private = Path(probe(sup)["tmpdir"])
    assert private.name.startswith(f"dmr-engine-{sup.proc.pid}-"), private
    sup.signal(signal.SIGKILL)
    sup.wait_exit()
    assert private.exists(), "nothing removed it: the supervisor was SIGKILLed"
    other = start(supervisors, world, {"user": USER})
    live = Path(probe(other)["tmpdir"])
    assert not private.exists(), "the next supervisor left the dead one's private directory"
    # A running supervisor's directories are left alone.
    start(supervisors, world, {"user": USER}, store="store2")
    assert live.exists(), "a running supervisor's private directory was removed"


def test_sandbox_read_and_sandbox_write_open_exactly_what_they_name(world, supervisors):
    sup = start(supervisors, world, {"user": USER, "sandbox_read": [str(world / "secret.txt")],
                                     "sandbox_write": [str(world / "shared")]})
    needs_landlock(sup)
    got = probe(sup)
    assert got["read_secret"] == "ok" and got["write_shared"] == "ok", got
    assert (world / "shared/from-the-engine").exists()
    for action in set(FORBIDDEN) - {"read_secret", "write_shared"}:
        assert got[action] in ("EACCES", "EPERM"), (action, got)


def test_the_real_llama_server_serves_a_chat_as_the_configured_user_with_its_draft_model(world, supervisors,
                                                                                        prereqs):
    """The other tiny model drafts for the tiny one (speculative decoding): the engine reads both models' blobs,
    and no other file of the store."""
    # A copy the user can reach: the installed one is under root's 0700 home.
    binary = world / "llama/bin/llama-server"
    binary.parent.mkdir(parents=True)
    shutil.copy(prereqs.llama_server, binary)
    binary.chmod(0o755)
    sup = start(supervisors, world, {"user": USER}, engine_binary=str(binary),
                speculative={"draft_model": "ai/tiny2", "num_tokens": 4})
    r = sup.chat(max_tokens=8)
    assert r.status_code == 200, r.text + "\n" + sup.diagnostics()
    assert r.json()["choices"][0]["message"]["content"] is not None
    pids = engine_pids(binary)
    assert pids, "no llama-server process"
    uid = int(status_field(pids[0], "Uid").split()[0])
    assert uid == pwd.getpwnam(USER).pw_uid
    assert status_field(pids[0], "NoNewPrivs") == "1"
    argv = Path(f"/proc/{pids[0]}/cmdline").read_bytes().decode().split("\0")
    assert "--model-draft" in argv, argv


def test_an_engine_its_user_cannot_reach_fails_to_load_naming_the_directory(world, supervisors, tmp_path):
    # The pytest directory is 0700 under /tmp/pytest-of-root.
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    shutil.copy(PROBER, hidden / "prober")
    (hidden / "prober").chmod(0o755)
    sup = start(supervisors, world, {"user": USER}, engine_binary=str(hidden / "prober"))
    r = sup.chat()
    assert r.status_code >= 500, r.text
    assert f"the engine's user {USER} cannot reach" in r.text and "cannot be searched" in r.text, r.text


def test_a_user_that_does_not_exist_or_a_bad_setting_stops_the_daemon_with_its_key(supervisors):
    cfg, _, _ = supervisors.write_config(sandbox={"user": "dmr-no-such-user"})
    rc, out, err = supervisors.run_to_exit(cfg)
    assert rc != 0 and "engines.user" in err and "useradd" in err, (rc, out, err)
    cfg, _, _ = supervisors.write_config(sandbox={"user": "-rf /", "sandbox_read": ["/"]})
    rc, out, err = supervisors.run_to_exit(cfg)
    assert rc != 0, (rc, out, err)
    assert 'engines.user: "-rf /" is not a user name' in err, err
    assert "engines.sandbox_read[0]: the whole file system cannot be allowed" in err, err
