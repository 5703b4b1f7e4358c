#!/usr/bin/env bash
# Creates or refreshes the Python virtual environment used by the tiny-model generator and the
# integration / SDK tests, at ${DMR_VENV:-<repo>/.venv}, with the exact pins of
# scripts/requirements-test.txt.
#
# Cached: a stamp file inside the venv holds the sha256 of the requirements file (and the
# interpreter it was built with); a second run with an unchanged file does nothing.
# Needs only python3 (>= 3.10, with the venv module) and the package registry.
#
# Prints the venv's python path as the last line of stdout; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
venv=${DMR_VENV:-$repo/.venv}
reqs=$here/requirements-test.txt
python=${PYTHON:-python3}
stamp=$venv/.requirements.sha256

log() { echo "python-env: $*" >&2; }

command -v "$python" >/dev/null 2>&1 || { log "no $python on PATH (install python3 and python3-venv)"; exit 1; }
want="$(sha256sum "$reqs" | cut -d' ' -f1) $("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$venv/bin/python"
  exit 0
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  log "creating $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2
elif [ -f "$stamp" ] && [ "$(cut -d' ' -f2 "$stamp")" != "$(cut -d' ' -f2 <<<"$want")" ]; then
  log "interpreter version changed; recreating $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2
fi

# Invalidate the stamp before touching the venv so an interrupted install is redone next time.
rm -f "$stamp"
log "installing $(grep -cv '^\s*\(#\|$\)' "$reqs") pinned packages from $reqs"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs" >&2
echo "$want" >"$stamp.tmp"
mv "$stamp.tmp" "$stamp"
echo "$venv/bin/python"
