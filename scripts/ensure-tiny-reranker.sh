#!/usr/bin/env bash
# Makes sure the tiny reranker test model exists and prints its path (last stdout line).
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/dmr-supervisor/models/tiny-reranker.gguf
#
# Generated offline by scripts/make-tiny-reranker.py (a random-weight BERT cross-encoder with a classification
# head; default seed, so the file is byte-identical on every machine) with the venv of scripts/python-env.sh. An
# existing file is kept; set DMR_TINY_REGENERATE=1 to write it again. Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${XDG_CACHE_HOME:-$HOME/.cache}/dmr-supervisor/models/tiny-reranker.gguf

if [ -s "$out" ] && [ "${DMR_TINY_REGENERATE:-0}" != 1 ]; then
  echo "$out"
  exit 0
fi

python=$("$here/python-env.sh" | tail -n 1)
echo "ensure-tiny-reranker: writing $out" >&2
"$python" "$here/make-tiny-reranker.py" "$out" >&2
echo "$out"
