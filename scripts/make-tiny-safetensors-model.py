#!/usr/bin/env python3
"""Write a tiny safetensors model directory laid out like a Hugging Face repo (what vLLM's `vllm serve DIR` reads).

    make-tiny-safetensors-model.py OUTDIR [--context-length N] [--architecture ARCH] [--no-chat-template]

Files written into OUTDIR (created if missing):
  config.json             `LlamaForCausalLM` / `llama`, hidden size 16, 2 layers, 2 heads, vocabulary 64,
                          max_position_embeddings = --context-length (default 2048)
  model.safetensors       a valid safetensors file: 8-byte little-endian header length, a JSON header
                          (`__metadata__` {"format": "pt"} and one entry per tensor, padded with spaces to a multiple
                          of 8) and the F32 data of a few small tensors (embeddings, one layer's norm, lm_head)
  tokenizer.json          a minimal valid `tokenizers` file: WordLevel model over 64 words, whitespace split
  tokenizer_config.json   special tokens and a ChatML chat template (left out with --no-chat-template, which
                          makes vLLM refuse chat completions, as it does for a base model without a template)
  generation_config.json  bos/eos token ids
The weights are not a working model: this is a fixture for the vLLM stand-in (tests/engines/vllm) and for
packaging tests. Only the standard library is used, and the bytes are deterministic (no timestamps, no
randomness: tensor values come from a fixed formula, JSON is written with sorted keys), so the digests of the
files are stable across runs and machines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
from pathlib import Path

HIDDEN = 16
LAYERS = 2
HEADS = 2
VOCAB = 64
INTERMEDIATE = 32
SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")


def tensor_values(name: str, count: int) -> list[float]:
    """Deterministic, name-dependent values in [-0.1, 0.1] (integer arithmetic: identical on every platform)."""
    seed = sum(name.encode())
    return [((i * 2654435761 + seed) % 2001 - 1000) / 10000 for i in range(count)]


def safetensors_bytes(tensors: dict[str, tuple[list[int], list[float]]]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    data = bytearray()
    for name in sorted(tensors):
        shape, values = tensors[name]
        assert math.prod(shape) == len(values), name  # invariant of the caller
        begin = len(data)
        data += struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [begin, len(data)]}
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data buffer starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw + bytes(data)


def tokenizer_json() -> dict:
    words = SPECIAL + [f"tok{i}" for i in range(VOCAB - len(SPECIAL))]
    vocab = {w: i for i, w in enumerate(words)}
    added = [{"id": i, "content": w, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, w in enumerate(SPECIAL)]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}}


def write(path: Path, content: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def dump(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--context-length", type=int, default=2048, help="max_position_embeddings (default 2048)")
    ap.add_argument("--architecture", default="LlamaForCausalLM",
                    help="config.json architectures[0] (e.g. LlamaModel for an embedding model)")
    ap.add_argument("--no-chat-template", action="store_true", help="leave chat_template out of tokenizer_config")
    a = ap.parse_args()
    if a.context_length <= 0:
        ap.error("--context-length must be positive")
    out: Path = a.outdir
    out.mkdir(parents=True, exist_ok=True)

    config = {"architectures": [a.architecture], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "num_key_value_heads": HEADS, "max_position_embeddings": a.context_length, "vocab_size": VOCAB,
              "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
              "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2, "transformers_version": "4.56.2"}
    tensors = {
        "model.embed_tokens.weight": ([VOCAB, HIDDEN], tensor_values("embed", VOCAB * HIDDEN)),
        "model.norm.weight": ([HIDDEN], [1.0] * HIDDEN),
        "model.layers.0.input_layernorm.weight": ([HIDDEN], [1.0] * HIDDEN),
        "lm_head.weight": ([VOCAB, HIDDEN], tensor_values("lm_head", VOCAB * HIDDEN)),
    }
    tok_config = {"bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>", "pad_token": "</s>",
                  "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                  "tokenizer_class": "PreTrainedTokenizerFast"}
    if not a.no_chat_template:
        tok_config["chat_template"] = CHATML

    write(out / "config.json", dump(config))
    write(out / "model.safetensors", safetensors_bytes(tensors))
    write(out / "tokenizer.json", dump(tokenizer_json()))
    write(out / "tokenizer_config.json", dump(tok_config))
    write(out / "generation_config.json", dump({"bos_token_id": 1, "eos_token_id": [2, 4],
                                                "transformers_version": "4.56.2"}))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
