#!/usr/bin/env bash
# Creates or refreshes the venv of the cluster-routing tools (issue 16): the real vLLM Router from PyPI
# (`vllm-router`, the vLLM project's Rust router) and `kubernetes-validate` (the Kubernetes OpenAPI schemas,
# offline), with the exact pins of scripts/requirements-fleet.txt, at
# ${DMR_FLEET_VENV:-${XDG_CACHE_HOME:-~/.cache}/dmr-supervisor/fleet-env}.
#
# Cached like scripts/python-env.sh: a stamp holds the sha256 of the requirements file and the interpreter version;
# a second run with an unchanged file does nothing. Progress goes to stderr; the last line of stdout is the venv's
# bin directory (it holds `vllm-router` and `kubernetes-validate`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${DMR_FLEET_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dmr-supervisor/fleet-env}
reqs=$here/requirements-fleet.txt
python=${PYTHON:-python3}
stamp=$venv/.requirements.sha256

log() { echo "fleet-env: $*" >&2; }

command -v "$python" >/dev/null 2>&1 || { log "no $python on PATH (install python3 and python3-venv)"; exit 1; }
want="$(sha256sum "$reqs" | cut -d' ' -f1) $("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

if [ -x "$venv/bin/vllm-router" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "cached: $venv ($(grep -m1 '^vllm-router==' "$reqs"), $(grep -m1 '^kubernetes-validate==' "$reqs"))"
  echo "$venv/bin"
  exit 0
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1 \
   || { [ -f "$stamp" ] && [ "$(cut -d' ' -f2 "$stamp")" != "$(cut -d' ' -f2 <<<"$want")" ]; }; then
  log "creating $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2
fi

rm -f "$stamp"  # an interrupted install is redone next time
log "installing $(grep -cv '^\s*\(#\|$\)' "$reqs") pinned packages from $reqs (vllm-router: a 24 MB wheel)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs" >&2
"$venv/bin/vllm-router" --help >/dev/null || { log "vllm-router installed but does not run: $venv/bin/vllm-router --help"; exit 1; }
echo "$want" >"$stamp.tmp"
mv "$stamp.tmp" "$stamp"
log "installed: $venv"
echo "$venv/bin"
