#!/usr/bin/env bash
# Runs the integration tests (tests/integration) against the real binary, a real llama-server and the tiny
# generated GGUF, preparing what can be prepared offline:
#   the Python venv (scripts/python-env.sh), the tiny model (scripts/ensure-tiny-model.sh) and llama-server
#   (engines/llama.cpp/install.sh, ~4 minutes the first time, cached afterwards).
# The binary is NOT built here: run `cargo build` first (or set DMR_SUPERVISOR_BIN).
# Extra arguments go to pytest, e.g. `scripts/test-integration.sh -k shutdown -x`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
python=$("$here/python-env.sh" | tail -n 1)
export DMR_TINY_GGUF=${DMR_TINY_GGUF:-$("$here/ensure-tiny-model.sh" | tail -n 1)}
export DMR_LLAMA_SERVER=${DMR_LLAMA_SERVER:-$("$repo/engines/llama.cpp/install.sh" | tail -n 1)}
export DMR_SUPERVISOR_BIN=${DMR_SUPERVISOR_BIN:-$repo/target/debug/dmr-supervisor}
cd "$repo"
exec "$python" -m pytest tests/integration -p no:cacheprovider "$@"
