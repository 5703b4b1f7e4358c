"""Hugging Face repositories for the pull tests, served by the stand-in in tests/hf/hf_server.py (re-exported here
as `HfServer`): `make_hf_root` lays out `testorg/tiny-GGUF` (the tiny model as its Q4_K_M file, another as Q8_0,
a README) and `testorg/tiny-st` (a tiny safetensors repository), every file's mtime pinned to `PINNED`; `start`
runs a supervisor pulling from a given endpoint; `lines` reads an NDJSON answer. Shared by test_huggingface.py and
test_attacks_hf.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from harness import REPO

sys.path.insert(0, str(REPO / "tests/hf"))
from hf_server import HfServer, git_blob_oid  # noqa: E402,F401

PINNED = 1_714_566_896  # the repo's files' mtime: HF's lastModified, so model ids are reproducible


def make_hf_root(root: Path, supervisors) -> Path:
    repo = root / "testorg/tiny-GGUF"
    repo.mkdir(parents=True)
    shutil.copy(supervisors.prereqs.tiny_gguf, repo / "tiny-Q4_K_M.gguf")
    shutil.copy(supervisors.other_tiny_model()["gguf"], repo / "tiny-Q8_0.gguf")
    (repo / "README.md").write_text("# tiny\n")
    st = root / "testorg/tiny-st"
    subprocess.run([sys.executable, str(REPO / "scripts/make-tiny-safetensors-model.py"), str(st)], check=True,
                   capture_output=True)
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (PINNED, PINNED))
    return root


def lines(r) -> list[dict]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def start(supervisors, endpoint: str, extra: str = "", **kw):
    return supervisors.start(models=[], extra=f'[registry]\nhf_endpoint = "{endpoint}"\n{extra}', **kw)
