#!/usr/bin/env bash
# CI smoke test for dmr-supervisor, to drop into any CI: the steps of DMR's own GitHub workflow (dmr-run.yml,
# docs/ci.md) with `dmr-supervisor` in place of `docker model`, plus the other APIs: install, start the daemon,
# version, import the model (the workflow pulls it; tests/integration/test_spec_workflow.py does that from a
# registry), `run` it with "Give me a fact about whales." under a 60 s timeout, ask the API to "Say hello" (top_k 1,
# temperature 0) and check the answer says hello, stream, the Ollama and Anthropic APIs, `rm` (which stops the
# idle engine) and `ls`, stop, and check that no engine process is left. Exits non-zero at the first failure,
# saying which step failed.
#
#   scripts/ci-smoke.sh [MODEL.gguf]      default: SmolLM2-135M-Instruct (scripts/ensure-smollm2.sh), as ai/smollm2
#
# A model of your own must be able to greet: the "Say hello" step checks what it answers.
#
# Environment: DMR_SUPERVISOR_BIN (default: cargo build --release here), DMR_LLAMA_SERVER (default:
# engines/llama.cpp/install.sh), DMR_SMOKE_RUN_TIMEOUT (the run step's timeout, default 60s as in the workflow).
# Needs curl and python3.
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
gguf=${1:-$(scripts/ensure-smollm2.sh | tail -n 1)}
model=ai/smollm2
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

cli() { "$DMR_SUPERVISOR_BIN" --host "$base" "$@"; }

step "version"
"$DMR_SUPERVISOR_BIN" --version || fail "dmr-supervisor --version failed"
api GET /version | check '"version" in j' "GET /version has no version"

step "import the model"
api POST /models/create "{\"from\": \"$gguf\", \"name\": \"$model\"}" | tail -n 1 |
  check 'j.get("type") == "success"' "the import did not succeed"
api GET /models | check 'any("'$model':latest" in m["tags"] for m in j)' "$model is not listed"

step "run it (60 s timeout)"
# As the workflow: a timeout (124) is accepted, any other failure is not.
timeout "${DMR_SMOKE_RUN_TIMEOUT:-60s}" "$DMR_SUPERVISOR_BIN" --host "$base" run "$model" "Give me a fact about whales." || {
  code=$?
  [ "$code" = 124 ] || fail "dmr-supervisor run failed with exit code $code"
  echo "(timed out, as the workflow allows)"
}

step "API: Say hello"
response=$(api POST /engines/llama.cpp/v1/chat/completions \
  "{\"model\": \"$model\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hello\"}], \"top_k\": 1, \"temperature\": 0}")
echo "Response received: $response"
printf '%s' "$response" | check '"hello" in j["choices"][0]["message"]["content"].lower()' \
  "the answer does not contain 'hello'"

step "stream (OpenAI SSE)"
curl -sSN "$base/engines/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"'$model'","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"stream":true}' |
  grep -q '^data: \[DONE\]' || fail "the stream did not end with [DONE]"

step "Ollama and Anthropic APIs"
api POST /api/chat '{"model":"'$model'","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_predict":4}}' |
  check 'j["done"] is True and j["message"]["role"] == "assistant"' "Ollama /api/chat failed"
api POST /v1/messages '{"model":"'$model'","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}' |
  check 'j["type"] == "message" and j["content"]' "Anthropic /v1/messages failed"

step "running engines"
api GET /engines/ps | check 'len(j) == 1 and j[0]["model_name"] == "'$model':latest"' "/engines/ps does not show the engine"
engine_pid=$(api GET /engines/ps | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["pid"])')

step "rm and ls"
# The engine is loaded and idle: rm stops it, then deletes the model (as `ollama rm`).
cli rm "$model" || fail "dmr-supervisor rm $model failed"
if kill -0 "$engine_pid" 2>/dev/null; then fail "engine $engine_pid still runs after rm"; fi
listing=$(cli ls) || fail "dmr-supervisor ls failed"
echo "$listing"
if grep -q "$model" <<<"$listing"; then fail "$model is still listed"; fi
api GET /engines/ps | check 'j == []' "an engine is still listed after rm"

step "stop"
kill -TERM "$sup_pid"
wait "$sup_pid" || fail "the supervisor exited with $? on SIGTERM"
sup_pid=""
if kill -0 "$engine_pid" 2>/dev/null; then fail "engine $engine_pid is still running"; fi
echo "smoke test passed"
