#!/usr/bin/env python3
"""Write a tiny random-weight `llama` GGUF that a real llama-server loads and serves.

    make-tiny-gguf.py OUT [--context-length N] [--seed S]

The model (see /work/shared/ENGINES.md, "A tiny real model"): architecture `llama`, 2 layers, 64-dim
embeddings, 4 heads (head dim 16, no GQA), feed-forward 128, F32 tensors, and a byte-level
SentencePiece-style vocabulary: `<unk>`, `<s>`, `</s>`, the ChatML markers `<|im_start|>` / `<|im_end|>`
(CONTROL), the 256 `<0xNN>` byte tokens (type BYTE) and a few normal pieces. The chat template is ChatML.
About 0.4 MB; the output is gibberish but deterministic at temperature 0.

Two deliberate details make it a better test fixture:
- the same seed always gives the same bytes (no timestamps; numpy's PCG64 generator);
- the output-projection rows of the end-of-generation tokens (`</s>`, `<|im_end|>`) are zero, so their
  logit is always 0 while the best random logit is positive: greedy decoding never stops by itself and a
  request generates exactly `max_tokens` tokens (with or without `ignore_eos`).

The file is written atomically: to a temporary file beside OUT, fsynced, then renamed over OUT.
Needs the `gguf` and `numpy` packages (scripts/python-env.sh installs the pinned versions).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

try:
    import numpy as np
    import gguf
    from tinygguf import atomic_writer, weights
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"make-tiny-gguf: {e}; run scripts/python-env.sh and use the venv's python")

ARCH = "llama"
N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_FF = 128
RMS_EPS = 1e-5
ROPE_BASE = 10000.0

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# SentencePiece marks a word boundary with U+2581; llama.cpp's SPM tokenizer replaces spaces with it.
SP = "\u2581"
NORMAL_PIECES = [
    SP, "e", "t", "a", "o", "n", "i", "s", "r", "h", "l",
    SP + "t", SP + "a", "he", "in", "er", "ll", "lo",
    SP + "the", SP + "is", SP + "Hello", SP + "hello", SP + "world", SP + "tiny", SP + "model",
]


def build_vocab() -> tuple[list[str], list[int], list[float], dict[str, int]]:
    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []

    def add(text: str, ttype: gguf.TokenType, score: float = 0.0) -> None:
        tokens.append(text)
        types.append(int(ttype))
        scores.append(score)

    add("<unk>", gguf.TokenType.UNKNOWN)
    add("<s>", gguf.TokenType.CONTROL)
    add("</s>", gguf.TokenType.CONTROL)
    for b in range(256):
        add(f"<0x{b:02X}>", gguf.TokenType.BYTE)
    add("<|im_start|>", gguf.TokenType.CONTROL)
    add("<|im_end|>", gguf.TokenType.CONTROL)
    # SPM merges prefer higher scores; longer pieces score higher so whole words win over letters.
    for i, piece in enumerate(NORMAL_PIECES):
        add(piece, gguf.TokenType.NORMAL, float(len(piece)) - i * 1e-3)
    ids = {t: i for i, t in enumerate(tokens)}
    return tokens, types, scores, ids



def write_model(out: Path, context_length: int, seed: int) -> None:
    tokens, types, scores, ids = build_vocab()
    n_vocab = len(tokens)
    rng = np.random.Generator(np.random.PCG64(seed))

    with atomic_writer(out, ARCH) as w:
        w.add_name("tiny")
        w.add_file_type(0)  # LLAMA_FTYPE_ALL_F32
        w.add_context_length(context_length)
        w.add_embedding_length(N_EMBD)
        w.add_block_count(N_LAYER)
        w.add_feed_forward_length(N_FF)
        w.add_head_count(N_HEAD)
        w.add_head_count_kv(N_HEAD)
        w.add_rope_dimension_count(N_EMBD // N_HEAD)
        w.add_rope_freq_base(ROPE_BASE)
        w.add_layer_norm_rms_eps(RMS_EPS)
        w.add_vocab_size(n_vocab)

        w.add_tokenizer_model("llama")  # SentencePiece (SPM) with byte fallback
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_scores(scores)
        w.add_unk_token_id(ids["<unk>"])
        w.add_bos_token_id(ids["<s>"])
        w.add_eos_token_id(ids["</s>"])
        w.add_add_bos_token(True)
        w.add_chat_template(CHATML)

        # numpy shapes are the reverse of ggml's ne: a [in, out] ggml matrix is (out, in) here.
        ones = np.ones((N_EMBD,), dtype=np.float32)
        w.add_tensor("token_embd.weight", weights(rng, (n_vocab, N_EMBD), 0.5))
        for n in range(N_LAYER):
            p = f"blk.{n}."
            w.add_tensor(p + "attn_norm.weight", ones.copy())
            w.add_tensor(p + "attn_q.weight", weights(rng, (N_EMBD, N_EMBD), 0.125))
            w.add_tensor(p + "attn_k.weight", weights(rng, (N_EMBD, N_EMBD), 0.125))
            w.add_tensor(p + "attn_v.weight", weights(rng, (N_EMBD, N_EMBD), 0.125))
            w.add_tensor(p + "attn_output.weight", weights(rng, (N_EMBD, N_EMBD), 0.125))
            w.add_tensor(p + "ffn_norm.weight", ones.copy())
            w.add_tensor(p + "ffn_gate.weight", weights(rng, (N_FF, N_EMBD), 0.125))
            w.add_tensor(p + "ffn_up.weight", weights(rng, (N_FF, N_EMBD), 0.125))
            w.add_tensor(p + "ffn_down.weight", weights(rng, (N_EMBD, N_FF), 0.09))
        w.add_tensor("output_norm.weight", ones.copy())
        output = weights(rng, (n_vocab, N_EMBD), 0.125)
        for eog in ("</s>", "<|im_end|>"):
            output[ids[eog], :] = 0.0  # never the argmax: see the module doc
        w.add_tensor("output.weight", output)
    try:
        dfd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write a tiny random-weight llama GGUF for tests.")
    ap.add_argument("out", type=Path, help="output .gguf path (written atomically)")
    ap.add_argument("--context-length", type=int, default=4096, help="llama.context_length (default 4096)")
    ap.add_argument("--seed", type=int, default=0, help="weight seed (default 0); same seed, same bytes")
    args = ap.parse_args(argv)
    if args.context_length <= 0:
        ap.error("--context-length must be > 0")
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    write_model(args.out, args.context_length, args.seed)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
