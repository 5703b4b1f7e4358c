"""A throwaway certificate authority for the TLS tests, made with the `openssl` command line.

`TestCA(dir)` makes a CA (EC P-256, `CA:TRUE`), and `issue(name, serial)` a server certificate signed by it for
`localhost` and `127.0.0.1` (EC P-256, `serverAuth`), returning the PEM paths of the certificate and its key. A
missing `openssl` fails the test with the command that installs it (never a skip)."""

from __future__ import annotations

import shutil
import ssl
import socket
import subprocess
from pathlib import Path

import pytest


def _openssl() -> str:
    found = shutil.which("openssl")
    if not found:
        pytest.fail("openssl not found: run `apt-get install -y openssl` (scripts/test.sh installs it)", pytrace=False)
    return found


def _run(*args: str, cwd: Path) -> None:
    p = subprocess.run([_openssl(), *args], cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed:\n{p.stderr}", pytrace=False)


EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class TestCA:
    __test__ = False  # not a pytest test class

    def __init__(self, dir: Path, name: str = "dmr-supervisor test CA"):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert = self.dir / "ca.pem"
        self.key = self.dir / "ca.key"
        _run("req", "-x509", *EC, "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)

    def issue(self, name: str, serial: int, hosts: tuple[str, ...] = ("DNS:localhost", "IP:127.0.0.1")
              ) -> tuple[Path, Path]:
        """A server certificate `CN=name` with this serial number for `hosts`; returns (cert.pem, key.pem)."""
        cert, key, csr = (self.dir / f"{name}.pem", self.dir / f"{name}.key", self.dir / f"{name}.csr")
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName={','.join(hosts)}\nbasicConstraints=CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
        _run("req", *EC, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=self.dir)
        _run("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
             "-set_serial", str(serial), "-days", "2", "-extfile", str(ext), "-out", str(cert), cwd=self.dir)
        return cert, key


def served_certificate(port: int, ca: Path, host: str = "127.0.0.1") -> dict:
    """The certificate a TLS server on `port` presents, verified against `ca` (Python's `getpeercert()` dict:
    `serialNumber` in hex, `subject`), with the ALPN protocol it chose under `"alpn"`."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            cert = dict(tls.getpeercert())
            cert["alpn"] = tls.selected_alpn_protocol()
            return cert


def common_name(cert: dict) -> str:
    return next(v for rdn in cert["subject"] for (k, v) in rdn if k == "commonName")
