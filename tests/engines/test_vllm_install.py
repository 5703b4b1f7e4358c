"""Tests of engines/vllm/install.sh without a GPU or network: its refusal without an NVIDIA driver, and a full
offline run in which a fake `nvidia-smi` stands in for the driver and a hand-made `vllm-0.11.0` wheel (a console
script printing its version) stands in for the real 10 GB install.

Run: .venv/bin/python -m pytest tests/engines -q
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parent.parent.parent / "engines" / "vllm"


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(cwd / "install.sh"), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    """A copy of the recipe, as the supervisor runs it (install.sh and requirements.txt in a temp dir)."""
    d = tmp_path / "recipe"
    d.mkdir()
    for name in ("install.sh", "requirements.txt"):
        shutil.copy(RECIPE / name, d / name)
    return d


def base_env(path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = path
    return env


def fake_wheel(directory: Path, version: str) -> None:
    files = {
        "vllm/__init__.py": f"__version__ = {version!r}\n",
        "vllm/cli.py": f"def main():\n    print({version!r})\n",
        f"vllm-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n",
        f"vllm-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                         "Tag: py3-none-any\n",
        f"vllm-{version}.dist-info/entry_points.txt": "[console_scripts]\nvllm = vllm.cli:main\n",
    }
    record = []
    with zipfile.ZipFile(directory / f"vllm-{version}-py3-none-any.whl", "w") as z:
        for name, content in files.items():
            z.writestr(name, content)
            digest = base64.urlsafe_b64encode(hashlib.sha256(content.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(content)}")
        record.append(f"vllm-{version}.dist-info/RECORD,,")
        z.writestr(f"vllm-{version}.dist-info/RECORD", "\n".join(record) + "\n")


def test_refuses_without_an_nvidia_driver(recipe, tmp_path):
    r = run([str(tmp_path / "prefix")], base_env("/usr/bin:/bin"), recipe)
    assert r.returncode == 1
    assert r.stdout.startswith("step 1/5: checking the machine")
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("install-vllm: error: step 1/5: no NVIDIA GPU driver found")
    assert not (tmp_path / "prefix").exists()


def test_bad_arguments(recipe):
    r = run(["--nope"], base_env("/usr/bin:/bin"), recipe)
    assert r.returncode == 2 and "unknown option --nope" in r.stderr
    r = run(["a", "b"], base_env("/usr/bin:/bin"), recipe)
    assert r.returncode == 2 and "more than one PREFIX" in r.stderr


def test_offline_install_writes_the_version_and_prints_the_binary(recipe, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 570.86.15, 143771 MiB'\n")
    smi.chmod(0o755)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_wheel(wheels, "0.11.0")
    env = base_env(f"{bin_dir}:/usr/local/bin:/usr/bin:/bin")
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels))
    prefix = tmp_path / "prefix"

    first = run([str(prefix)], env, recipe)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines if ln.startswith("step")] == [f"step {i}/5" for i in range(1, 6)]
    assert "NVIDIA H200" in first.stdout
    assert lines[-1] == str(prefix / "bin" / "vllm")
    assert (prefix / "version").read_text().strip() == "0.11.0"

    again = run([str(prefix)], env, recipe)  # idempotent: nothing to install the second time
    assert again.returncode == 0, again.stderr
    assert "vllm 0.11.0 already installed" in again.stdout
    assert again.stdout.strip().splitlines()[-1] == str(prefix / "bin" / "vllm")

    # bumping the pin re-installs and rewrites the version file
    (recipe / "requirements.txt").write_text("vllm==0.11.1\n")
    fake_wheel(wheels, "0.11.1")
    bumped = run([str(prefix)], env, recipe)
    assert bumped.returncode == 0, bumped.stderr
    assert (prefix / "version").read_text().strip() == "0.11.1"
