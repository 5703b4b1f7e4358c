"""What the tiny test-model generators (make-tiny-gguf.py, make-tiny-reranker.py, make-tiny-mmproj.py) share:
random weights from a seeded generator, and a GGUF file written atomically (a temp file beside it, fsync, rename),
so a cut run never leaves half a model where the tests look for one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np


def weights(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


@contextlib.contextmanager
def atomic_writer(out: Path, arch: str) -> Iterator[gguf.GGUFWriter]:
    """A GGUF writer for `arch`; once the block has added keys and tensors, the file is written and renamed to
    `out` (mode 0644). On any error nothing is left behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        yield w
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
