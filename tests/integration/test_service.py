"""systemd integration: the binary speaks the sd_notify protocol to the NOTIFY_SOCKET the test listens on, the way
systemd would (a Unix datagram socket); and the shipped unit file passes `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from harness import REPO


class NotifySocket:
    """A datagram socket like systemd's: each message is one datagram of `KEY=value` lines."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0) -> dict[str, str]:
        """The first message (already received or arriving within `timeout`) with `key` (= `value`)."""
        def match(m: dict[str, str]) -> bool:
            return key in m and (value is None or m[key] == value)
        for m in self.messages:
            if match(m):
                return m
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                break
            m = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(m)
            if match(m):
                return m
        pytest.fail(f"no {key}={value or '*'} within {timeout}s; got {self.messages}", pytrace=False)

    def count(self, key: str) -> int:
        """Messages with `key` so far, counting those waiting in the socket."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(4096)
                self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line))
        except BlockingIOError:
            pass
        return sum(1 for m in self.messages if key in m)


@pytest.fixture
def notify(tmp_path):
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.sock.close()


def test_ready_status_watchdog_and_stopping(supervisors, notify):
    sup = supervisors.start(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    ready = notify.wait_for("READY", "1")
    assert ready["STATUS"] == f"listening on 127.0.0.1:{sup.port}", ready
    # Watchdog pings at half the period while the scheduler answers.
    notify.wait_for("WATCHDOG", "1", timeout=2)
    assert sup.chat(max_tokens=2).status_code == 200
    notify.wait_for("STATUS", "1 model loaded", timeout=3)
    time.sleep(1.0)
    assert notify.count("WATCHDOG") >= 3, notify.messages
    sup.signal(signal.SIGTERM)
    stopping = notify.wait_for("STOPPING", "1")
    assert stopping["STATUS"].startswith("stopping"), stopping
    assert sup.wait_exit() == 0


def test_without_a_watchdog_only_status_changes_are_sent(supervisors, notify):
    sup = supervisors.start(env={"NOTIFY_SOCKET": str(notify.path)})
    notify.wait_for("READY", "1")
    assert sup.chat(max_tokens=2).status_code == 200
    notify.wait_for("STATUS", "1 model loaded", timeout=7)
    assert notify.count("WATCHDOG") == 0, notify.messages


def test_the_unit_file_verifies(tmp_path, prereqs):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze not found: install Debian's systemd package (scripts/test.sh does)", pytrace=False)
    unit = (REPO / "scripts/systemd/dmr-supervisor.service").read_text()
    # Point ExecStart at the binary under test (the unit names the installed path).
    unit = unit.replace("/usr/local/bin/dmr-supervisor", str(prereqs.supervisor))
    path = tmp_path / "dmr-supervisor.service"
    path.write_text(unit)
    p = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    problems = [line for line in (p.stdout + p.stderr).splitlines()
                if "dmr-supervisor.service" in line]
    assert p.returncode == 0 and not problems, p.stdout + p.stderr


def test_the_service_config_is_valid(prereqs):
    p = subprocess.run([str(prereqs.supervisor), "--check-config", "--config",
                        str(REPO / "scripts/systemd/config.toml")], capture_output=True, text=True)
    assert p.returncode == 0 and "configuration OK" in p.stdout, p.stdout + p.stderr
