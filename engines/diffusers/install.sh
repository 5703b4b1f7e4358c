#!/usr/bin/env bash
# Installs the diffusers image runner: a Python virtual environment with the exact pins of
# requirements.txt (torch, diffusers, transformers, ...) plus runner.py, at
#   PREFIX (default ${XDG_DATA_HOME:-$HOME/.local/share}/dmr-supervisor/engines/diffusers)
# which is where dmr-supervisor looks when [engines.diffusers] names no python/runner:
#   PREFIX/bin/python, PREFIX/runner.py, PREFIX/version (the diffusers version).
#
# torch flavour: PyPI's Linux torch wheel is the CUDA build and pulls ~4 GB of nvidia-*/cuda-* wheels
# plus triton (~1 GB). Every CUDA library is linked into libtorch, so even a CPU-only `import torch`
# needs them (`pip install --no-deps torch` fails with "libcudart.so.13: cannot open shared object
# file"); triton is the one part that is only needed for torch.compile on a GPU. So:
#   - with an NVIDIA GPU (`nvidia-smi` on PATH): the full `pip install -r requirements.txt`;
#   - without: the same resolution, with triton left out (~1 GB and ~15 s less; see README.md).
# DMR_DIFFUSERS_TORCH=cuda|cpu forces either.
#
# Idempotent: a stamp in PREFIX records the sha256 of requirements.txt, the flavour and the Python
# version; a second run with nothing changed only re-checks the imports and the runner copy.
# Progress: `step N/M: ...` lines on stdout, then PREFIX/bin/python as the last stdout line (what
# `dmr-supervisor engines install diffusers` reports); pip's output goes to PREFIX/install.log. On failure:
# one `install-diffusers: error: ...` line on stderr and a non-zero exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=${1:-${XDG_DATA_HOME:-$HOME/.local/share}/dmr-supervisor/engines/diffusers}
reqs=$here/requirements.txt
runner=$here/runner.py
python=${PYTHON:-python3}
steps=5
step=1
log_file=

fail() {
  local detail=""
  if [ -n "$log_file" ] && [ -s "$log_file" ]; then
    detail=$(grep -v '^\s*$' "$log_file" | tail -n 1 | cut -c1-300)
    [ -n "$detail" ] && detail=" (last output: $detail; full log: $log_file)"
  fi
  echo "install-diffusers: error: step $step/$steps: $*$detail" >&2
  exit 1
}
# progress N message: starts step N (failures from here on name it).
progress() { step=$1; shift; echo "step $step/$steps: $*"; }
# Runs a command with its output appended to the log; fails with $1 as the message.
logged() {
  local what=$1
  shift
  "$@" >>"$log_file" 2>&1 || fail "$what"
}

[ -f "$reqs" ] || { echo "install-diffusers: error: $reqs is missing" >&2; exit 1; }
[ -f "$runner" ] || { echo "install-diffusers: error: $runner is missing" >&2; exit 1; }

# ---- 1: the interpreter ---------------------------------------------------------------------------
progress 1 "checking $python (3.10 or newer, with the venv module)"
command -v "$python" >/dev/null 2>&1 || fail "no $python on PATH (install python3 and python3-venv)"
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || fail "$python does not run"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || fail "$python is $pyver; diffusers/transformers need 3.10 or newer"
"$python" -c 'import venv, ensurepip' >/dev/null 2>&1 || fail "$python lacks the venv/ensurepip modules (apt-get install python3-venv)"

flavour=${DMR_DIFFUSERS_TORCH:-}
if [ -z "$flavour" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then flavour=cuda; else flavour=cpu; fi
fi
case $flavour in cuda | cpu) ;; *) fail "DMR_DIFFUSERS_TORCH must be cuda or cpu, not '$flavour'" ;; esac

# ---- 2: the venv ----------------------------------------------------------------------------------
step=2
mkdir -p "$prefix" 2>/dev/null || fail "cannot create $prefix"
[ -w "$prefix" ] || fail "$prefix is not writable"
log_file=$prefix/install.log
stamp=$prefix/.requirements.stamp
want="$(sha256sum "$reqs" | cut -d' ' -f1) $flavour $pyver"
vpy=$prefix/bin/python
if [ -x "$vpy" ] && "$vpy" -c 'import sys' >/dev/null 2>&1; then
  have_ver=$("$vpy" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$have_ver" = "$pyver" ]; then
    progress 2 "virtual environment $prefix already there (Python $pyver)"
  else
    progress 2 "recreating the virtual environment at $prefix (Python $have_ver -> $pyver)"
    # --clear empties PREFIX, install.log included, so its output is kept aside
    nl=$'\n'
    out=$("$python" -m venv --clear "$prefix" 2>&1) || fail "could not recreate the virtual environment at $prefix: ${out##*$nl}"
  fi
else
  progress 2 "creating a virtual environment at $prefix (Python $pyver)"
  rm -f "$stamp"
  logged "could not create a virtual environment at $prefix" "$python" -m venv "$prefix"
fi
pip=("$vpy" -m pip --disable-pip-version-check --no-input)

# ---- 3: the packages ------------------------------------------------------------------------------
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  progress 3 "packages already installed ($flavour torch; requirements.txt unchanged)"
else
  rm -f "$stamp" # an interrupted install is redone next time
  if [ "$flavour" = cuda ]; then
    progress 3 "installing requirements.txt with the full CUDA torch (~5.5 GB; minutes)"
  else
    progress 3 "installing requirements.txt, torch without triton (CPU; ~4.5 GB; minutes)"
  fi
  echo "=== $(date -u +%FT%TZ) install ($flavour) from $reqs" >>"$log_file"
  # --dry-run --report needs pip 22.2; older Pythons bundle older pips (a no-op when new enough)
  logged "upgrading pip in the venv failed" "${pip[@]}" install "pip>=23.1"
  if [ "$flavour" = cuda ]; then
    logged "pip install -r requirements.txt failed" "${pip[@]}" install -r "$reqs"
  else
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmr-diffusers.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    # Resolve the whole set as pip would (only metadata is fetched), then install exactly that set
    # minus triton with --no-deps, so that nothing pulls triton back in.
    logged "resolving requirements.txt failed" "${pip[@]}" install --dry-run --quiet --report "$tmp/plan.json" -r "$reqs"
    logged "reading pip's resolution failed" "$vpy" - "$tmp/plan.json" "$tmp/plan.txt" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as out:
    for item in report.get("install", []):
        meta = item["metadata"]
        if meta["name"].lower() == "triton":
            continue
        out.write("%s==%s\n" % (meta["name"], meta["version"]))
EOF
    if [ -s "$tmp/plan.txt" ]; then
      logged "pip install of the resolved packages failed" "${pip[@]}" install --no-deps -r "$tmp/plan.txt"
    fi
  fi
  echo "$want" >"$stamp"
fi

# ---- 4: does it import ----------------------------------------------------------------------------
progress 4 "checking that torch and diffusers import"
logged "torch/diffusers do not import in $prefix" "$vpy" -c '
import torch, diffusers, transformers, PIL
torch.zeros(2) + 1
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(), "diffusers", diffusers.__version__)
'

# ---- 5: the runner --------------------------------------------------------------------------------
progress 5 "installing runner.py and the version file"
if ! cmp -s "$runner" "$prefix/runner.py"; then
  cp "$runner" "$prefix/runner.py.tmp" && mv "$prefix/runner.py.tmp" "$prefix/runner.py" || fail "could not copy runner.py"
fi
version=$("$vpy" -c 'import importlib.metadata as m; print(m.version("diffusers"))') || fail "cannot read the diffusers version"
if [ "$(cat "$prefix/version" 2>/dev/null)" != "$version" ]; then
  { echo "$version" >"$prefix/version.tmp" && mv "$prefix/version.tmp" "$prefix/version"; } ||
    fail "could not write $prefix/version"
fi
echo "$vpy"
