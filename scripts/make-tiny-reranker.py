#!/usr/bin/env python3
"""Write a tiny random-weight BERT cross-encoder (a reranker) GGUF that a real llama-server reranks with.

    make-tiny-reranker.py OUT [--seed S] [--embedding]

The model is what llama.cpp's converter writes for a `BertForSequenceClassification` reranker (bge-reranker,
ms-marco MiniLM cross-encoders): architecture `bert`, non-causal attention, pooling type RANK (4), one classifier
output label, 2 layers, 32-dim embeddings, 2 heads, feed-forward 64, learned position embeddings, one token type,
F32 tensors, and the classification head `cls` (dense + tanh) and `cls.output` (one logit per pair). The
vocabulary is a WordPiece one (`tokenizer.ggml.model` = "bert"): `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`, the
lower-case letters, digits and some punctuation as word starts (`\u2581x`, llama.cpp's phantom-space form) and as
continuations (`x`), and a few whole words. llama-server started with `--reranking` scores `[CLS] query [SEP] doc
[SEP]` by the first value of the head's output. Scores are random but deterministic: different documents score
differently, so ordering, `top_n` and indices can be checked. About 60 KB.

The same seed always gives the same bytes (no timestamps; numpy's PCG64). The file is written atomically: a
temporary file beside OUT, fsynced, renamed over OUT. `--embedding` writes the same encoder as an embedding model
instead (pooling type MEAN, no classification head, no labels): what the supervisor must refuse to rerank with. Needs `gguf` and `numpy` (scripts/python-env.sh).
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

try:
    import numpy as np
    import gguf
    from tinygguf import atomic_writer, weights
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"make-tiny-reranker: {e}; run scripts/python-env.sh and use the venv's python")

ARCH = "bert"
N_LAYER = 2
N_EMBD = 32
N_HEAD = 2
N_FF = 64
N_CTX = 512
NORM_EPS = 1e-12
POOLING_RANK = 4

SP = "\u2581"
WORDS = ["the", "is", "of", "and", "to", "in", "what", "capital", "france", "paris", "berlin", "germany",
         "cat", "dog", "sat", "mat", "hello", "world", "tiny", "model", "rust", "python", "city", "animal"]


def build_vocab() -> tuple[list[str], list[int]]:
    tokens: list[str] = []
    types: list[int] = []
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        tokens.append(special)
        types.append(int(gguf.TokenType.CONTROL))
    chars = string.ascii_lowercase + string.digits + ".,?!'-:;()"
    for c in chars:
        tokens.append(SP + c)  # a word starting with c
        types.append(int(gguf.TokenType.NORMAL))
    for c in chars:
        tokens.append(c)  # `##c`: c continuing a word
        types.append(int(gguf.TokenType.NORMAL))
    for w in WORDS:
        tokens.append(SP + w)
        types.append(int(gguf.TokenType.NORMAL))
    return tokens, types



def write_model(out: Path, seed: int, embedding: bool = False) -> None:
    tokens, types = build_vocab()
    n_vocab = len(tokens)
    rng = np.random.Generator(np.random.PCG64(seed))

    with atomic_writer(out, ARCH) as w:
        w.add_name("tiny-reranker")
        w.add_file_type(0)  # LLAMA_FTYPE_ALL_F32
        w.add_context_length(N_CTX)
        w.add_embedding_length(N_EMBD)
        w.add_block_count(N_LAYER)
        w.add_feed_forward_length(N_FF)
        w.add_head_count(N_HEAD)
        w.add_layer_norm_eps(NORM_EPS)
        w.add_causal_attention(False)
        if embedding:
            w.add_pooling_type(gguf.PoolingType.MEAN)
        else:
            w.add_pooling_type(gguf.PoolingType(POOLING_RANK))
            w.add_classifier_output_labels(["LABEL_0"])

        w.add_tokenizer_model("bert")
        w.add_token_type_count(1)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_pad_token_id(0)
        w.add_unk_token_id(1)
        w.add_bos_token_id(2)  # [CLS]
        w.add_sep_token_id(3)
        w.add_mask_token_id(4)
        w.add_add_bos_token(True)
        w.add_add_sep_token(True)

        ones = np.ones((N_EMBD,), dtype=np.float32)
        zeros = np.zeros((N_EMBD,), dtype=np.float32)
        # numpy shapes are the reverse of ggml's ne: a [in, out] ggml matrix is (out, in) here.
        w.add_tensor("token_embd.weight", weights(rng, (n_vocab, N_EMBD), 0.5))
        w.add_tensor("token_types.weight", weights(rng, (1, N_EMBD), 0.02))
        w.add_tensor("position_embd.weight", weights(rng, (N_CTX, N_EMBD), 0.1))
        w.add_tensor("token_embd_norm.weight", ones.copy())
        w.add_tensor("token_embd_norm.bias", zeros.copy())
        for n in range(N_LAYER):
            p = f"blk.{n}."
            for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
                w.add_tensor(p + name + ".weight", weights(rng, (N_EMBD, N_EMBD), 0.2))
                w.add_tensor(p + name + ".bias", zeros.copy())
            w.add_tensor(p + "attn_output_norm.weight", ones.copy())
            w.add_tensor(p + "attn_output_norm.bias", zeros.copy())
            w.add_tensor(p + "ffn_up.weight", weights(rng, (N_FF, N_EMBD), 0.2))
            w.add_tensor(p + "ffn_up.bias", np.zeros((N_FF,), dtype=np.float32))
            w.add_tensor(p + "ffn_down.weight", weights(rng, (N_EMBD, N_FF), 0.15))
            w.add_tensor(p + "ffn_down.bias", zeros.copy())
            w.add_tensor(p + "layer_output_norm.weight", ones.copy())
            w.add_tensor(p + "layer_output_norm.bias", zeros.copy())
        if not embedding:
            w.add_tensor("cls.weight", weights(rng, (N_EMBD, N_EMBD), 0.3))
            w.add_tensor("cls.bias", zeros.copy())
            w.add_tensor("cls.output.weight", weights(rng, (1, N_EMBD), 1.0))
            w.add_tensor("cls.output.bias", np.zeros((1,), dtype=np.float32))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write a tiny random-weight BERT reranker GGUF for tests.")
    ap.add_argument("out", type=Path, help="output .gguf path (written atomically)")
    ap.add_argument("--seed", type=int, default=0, help="weight seed (default 0); same seed, same bytes")
    ap.add_argument("--embedding", action="store_true",
                    help="an embedding model instead (mean pooling, no classification head)")
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    write_model(args.out, args.seed, args.embedding)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
