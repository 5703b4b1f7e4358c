#!/usr/bin/env bash
# CI smoke test for dmr-supervisor, to drop into any CI (the equivalent of DMR's GitHub workflow, docs/ci.md):
# install, start the daemon, import a model, run a prompt through each API, delete the model, stop, and check that
# no engine process is left. Exits non-zero at the first failure, saying which step failed.
#
#   scripts/ci-smoke.sh [MODEL.gguf]      default: the tiny test model (scripts/ensure-tiny-model.sh)
#
# Environment: DMR_SUPERVISOR_BIN (default: cargo build --release here), DMR_LLAMA_SERVER (default:
# engines/llama.cpp/install.sh). Needs curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "== $*"; }
fail() { echo "FAILED: $*" >&2; [ -f "$work/supervisor.log" ] && tail -n 40 "$work/supervisor.log" >&2; exit 1; }

work=$(mktemp -d)
sup_pid=""
cleanup() {
  if [ -n "$sup_pid" ] && kill -0 "$sup_pid" 2>/dev/null; then kill -TERM "$sup_pid"; wait "$sup_pid" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

step "install"
llama=${DMR_LLAMA_SERVER:-$(engines/llama.cpp/install.sh | tail -n 1)}
if [ -z "${DMR_SUPERVISOR_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin dmr-supervisor
  DMR_SUPERVISOR_BIN=$PWD/target/release/dmr-supervisor
fi
gguf=${1:-$(scripts/ensure-tiny-model.sh | tail -n 1)}
[ -f "$gguf" ] || fail "no model file at $gguf"

step "start"
cat >"$work/config.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[store]
path = "$work/store"
# The model is imported over the API from this machine's disk: allow its directory (none is by default).
import_roots = ["$(cd "$(dirname "$gguf")" && pwd -P)"]
[engines.llamacpp]
binary = "$llama"
TOML
"$DMR_SUPERVISOR_BIN" --config "$work/config.toml" >"$work/stdout" 2>"$work/supervisor.log" &
sup_pid=$!
for _ in $(seq 1 100); do
  addr=$(sed -n 's/^listening on //p' "$work/stdout")
  [ -n "$addr" ] && break
  kill -0 "$sup_pid" 2>/dev/null || fail "the supervisor exited at start"
  sleep 0.1
done
[ -n "${addr:-}" ] || fail "the supervisor did not start listening"
base="http://$addr"
echo "listening on $base"

api() { # METHOD PATH [JSON] -> body on stdout; fails on a non-2xx status
  local out code
  out=$(curl -sS -X "$1" "$base$2" -H 'content-type: application/json' ${3:+-d "$3"} -w '\n%{http_code}') ||
    fail "$1 $2: no answer"
  code=${out##*$'\n'}
  [ "${code:0:1}" = 2 ] || fail "$1 $2 answered $code: ${out%$'\n'*}"
  printf '%s' "${out%$'\n'*}"
}
check() { # PYTHON-EXPRESSION over `j` (the JSON on stdin), WHAT
  python3 -c "import json,sys; j=json.load(sys.stdin); sys.exit(0 if ($1) else 1)" || fail "$2"
}

step "version"
api GET /version | check '"version" in j' "GET /version has no version"

step "import the model"
api POST /models/create "{\"from\": \"$gguf\", \"name\": \"ai/smoke\"}" | tail -n 1 |
  check 'j.get("type") == "success"' "the import did not succeed"
api GET /models | check 'any("ai/smoke:latest" in m["tags"] for m in j)' "ai/smoke is not listed"

step "run a prompt (OpenAI)"
api POST /engines/v1/chat/completions \
  '{"model":"ai/smoke","messages":[{"role":"user","content":"Give me a fact about whales."}],"max_tokens":16}' |
  check 'j["choices"][0]["message"]["content"] and j["usage"]["completion_tokens"] > 0' "no answer from the model"

step "stream (OpenAI SSE)"
curl -sSN "$base/engines/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"ai/smoke","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"stream":true}' |
  grep -q '^data: \[DONE\]' || fail "the stream did not end with [DONE]"

step "Ollama and Anthropic APIs"
api POST /api/chat '{"model":"ai/smoke","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_predict":4}}' |
  check 'j["done"] is True and j["message"]["role"] == "assistant"' "Ollama /api/chat failed"
api POST /v1/messages '{"model":"ai/smoke","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}' |
  check 'j["type"] == "message" and j["content"]' "Anthropic /v1/messages failed"

step "running engines"
api GET /engines/ps | check 'len(j) == 1 and j[0]["model_name"] == "ai/smoke:latest"' "/engines/ps does not show the engine"
engine_pid=$(api GET /engines/ps | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["pid"])')

step "delete the model"
api POST /engines/unload '{"all": true}' | check 'j["unloaded_runners"] == 1' "unload did not stop the engine"
api DELETE /models/ai/smoke >/dev/null
api GET /models | check 'not any("ai/smoke:latest" in m["tags"] for m in j)' "ai/smoke is still listed"

step "stop"
kill -TERM "$sup_pid"
wait "$sup_pid" || fail "the supervisor exited with $? on SIGTERM"
sup_pid=""
if kill -0 "$engine_pid" 2>/dev/null; then fail "engine $engine_pid is still running"; fi
echo "smoke test passed"
