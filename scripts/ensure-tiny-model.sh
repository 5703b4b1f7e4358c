#!/usr/bin/env bash
# Makes sure a tiny generated test model exists and prints its path (last stdout line).
#
#   scripts/ensure-tiny-model.sh [llama|reranker|mmproj]      (default: llama)
#
#   llama     ${XDG_CACHE_HOME:-$HOME/.cache}/dmr-supervisor/models/tiny-llama.gguf     scripts/make-tiny-gguf.py
#   reranker  .../tiny-reranker.gguf   scripts/make-tiny-reranker.py (a random-weight BERT cross-encoder with a
#             classification head)
#   mmproj    .../tiny-mmproj.gguf     scripts/make-tiny-mmproj.py (the tiny llama's vision projector, output
#             width 64 to match it)
#
# Generated offline with the venv of scripts/python-env.sh, with default seeds (and context length), so each file
# is byte-identical on every machine. An existing file is kept; set DMR_TINY_REGENERATE=1 to write it again.
# Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kind=${1:-llama}
case "$kind" in
  llama) generator=make-tiny-gguf.py ;;
  reranker) generator=make-tiny-reranker.py ;;
  mmproj) generator=make-tiny-mmproj.py ;;
  *) echo "ensure-tiny-model: unknown kind $kind (llama, reranker or mmproj)" >&2; exit 2 ;;
esac
out=${XDG_CACHE_HOME:-$HOME/.cache}/dmr-supervisor/models/tiny-$kind.gguf

if [ -s "$out" ] && [ "${DMR_TINY_REGENERATE:-0}" != 1 ]; then
  echo "$out"
  exit 0
fi

python=$("$here/python-env.sh" | tail -n 1)
echo "ensure-tiny-model: writing $out" >&2
"$python" "$here/$generator" "$out" >&2
echo "$out"
