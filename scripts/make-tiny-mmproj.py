#!/usr/bin/env python3
"""Write a tiny random-weight multimodal projector (mmproj) GGUF that a real llama-server loads.

    make-tiny-mmproj.py OUT [--seed S] [--n-embd-text N]

The projector is llama.cpp's LLaVA "mlp" type (tools/mtmd/clip.cpp, models/llava.cpp): a CLIP-style
vision encoder of 1 block, 32-dim embeddings, 2 heads, feed-forward 64, 32x32 images cut into 16x16
patches (4 patches, plus a class embedding), then `mm.0` (32 -> 64), GELU, `mm.2` (64 -> N) whose output
width N must equal the text model's embedding width (64 for scripts/make-tiny-gguf.py's model). An image
therefore becomes 4 embeddings in the text model's prompt. F32 tensors, about 60 KB.

The same seed always gives the same bytes (no timestamps; numpy's PCG64 generator). The file is written
atomically: to a temporary file beside OUT, fsynced, then renamed over OUT.
Needs the `gguf` and `numpy` packages (scripts/python-env.sh installs the pinned versions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import numpy as np
    import gguf
    from tinygguf import atomic_writer, weights
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"make-tiny-mmproj: {e}; run scripts/python-env.sh and use the venv's python")

N_EMBD = 32
N_HEAD = 2
N_FF = 64
N_LAYER = 1
IMAGE_SIZE = 32
PATCH_SIZE = 16
PROJ_HIDDEN = 64
LN_EPS = 1e-5



def write_projector(out: Path, seed: int, n_embd_text: int) -> None:
    rng = np.random.Generator(np.random.PCG64(seed))
    n_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2

    with atomic_writer(out, "clip") as w:
        w.add_name("tiny-mmproj")
        w.add_file_type(0)  # F32
        w.add_bool("clip.has_vision_encoder", True)
        w.add_bool("clip.has_text_encoder", False)
        w.add_bool("clip.has_llava_projector", True)
        w.add_string("clip.projector_type", "mlp")
        w.add_bool("clip.use_gelu", True)
        w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
        w.add_uint32("clip.vision.patch_size", PATCH_SIZE)
        w.add_uint32("clip.vision.embedding_length", N_EMBD)
        w.add_uint32("clip.vision.feed_forward_length", N_FF)
        w.add_uint32("clip.vision.projection_dim", n_embd_text)
        w.add_uint32("clip.vision.attention.head_count", N_HEAD)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", LN_EPS)
        w.add_uint32("clip.vision.block_count", N_LAYER)
        w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
        w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

        # numpy shapes are the reverse of ggml's ne: a [in, out] ggml matrix is (out, in) here; the
        # patch convolution's kernel is ggml [patch, patch, 3, n_embd], numpy (n_embd, 3, patch, patch).
        ones = np.ones((N_EMBD,), dtype=np.float32)
        zeros = np.zeros((N_EMBD,), dtype=np.float32)
        w.add_tensor("v.patch_embd.weight", weights(rng, (N_EMBD, 3, PATCH_SIZE, PATCH_SIZE), 0.05))
        w.add_tensor("v.class_embd", weights(rng, (N_EMBD,), 0.1))
        w.add_tensor("v.position_embd.weight", weights(rng, (n_patches + 1, N_EMBD), 0.1))
        w.add_tensor("v.pre_ln.weight", ones.copy())
        w.add_tensor("v.pre_ln.bias", zeros.copy())
        for n in range(N_LAYER):
            p = f"v.blk.{n}."
            for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
                w.add_tensor(p + name + ".weight", weights(rng, (N_EMBD, N_EMBD), 0.15))
                w.add_tensor(p + name + ".bias", zeros.copy())
            w.add_tensor(p + "ln1.weight", ones.copy())
            w.add_tensor(p + "ln1.bias", zeros.copy())
            w.add_tensor(p + "ln2.weight", ones.copy())
            w.add_tensor(p + "ln2.bias", zeros.copy())
            w.add_tensor(p + "ffn_up.weight", weights(rng, (N_FF, N_EMBD), 0.15))
            w.add_tensor(p + "ffn_up.bias", np.zeros((N_FF,), dtype=np.float32))
            w.add_tensor(p + "ffn_down.weight", weights(rng, (N_EMBD, N_FF), 0.1))
            w.add_tensor(p + "ffn_down.bias", zeros.copy())
        w.add_tensor("mm.0.weight", weights(rng, (PROJ_HIDDEN, N_EMBD), 0.15))
        w.add_tensor("mm.0.bias", np.zeros((PROJ_HIDDEN,), dtype=np.float32))
        w.add_tensor("mm.2.weight", weights(rng, (n_embd_text, PROJ_HIDDEN), 0.1))
        w.add_tensor("mm.2.bias", np.zeros((n_embd_text,), dtype=np.float32))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write a tiny random-weight LLaVA-mlp mmproj GGUF for tests.")
    ap.add_argument("out", type=Path, help="output .gguf path (written atomically)")
    ap.add_argument("--seed", type=int, default=0, help="weight seed (default 0); same seed, same bytes")
    ap.add_argument("--n-embd-text", type=int, default=64,
                    help="the text model's embedding width, the projector's output (default 64)")
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    if args.n_embd_text <= 0:
        ap.error("--n-embd-text must be > 0")
    write_projector(args.out, args.seed, args.n_embd_text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
