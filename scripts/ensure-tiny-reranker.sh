#!/usr/bin/env bash
# The tiny reranker test model: scripts/ensure-tiny-model.sh reranker (prints its path).
exec "$(dirname "${BASH_SOURCE[0]}")/ensure-tiny-model.sh" reranker "$@"
