#!/usr/bin/env bash
# Installs vLLM (the pin in requirements.txt) into a Python virtual environment for dmr-supervisor:
#   install.sh [PREFIX] [--force]
#   PREFIX default: ${XDG_DATA_HOME:-$HOME/.local/share}/dmr-supervisor/engines/vllm
# which is where dmr-supervisor looks when [engines.vllm] names no binary and `vllm` is not on PATH:
#   PREFIX/bin/vllm      the CLI the supervisor runs (`vllm serve MODEL_DIR --host --port ...`)
#   PREFIX/version       the installed vLLM version (read by the supervisor; DMR reads the same file)
#   PREFIX/install.log   pip's output
#
# Needs: Linux on x86_64 or aarch64 (the two architectures vllm 0.11.0 publishes wheels for; elsewhere pip
# would try a multi-hour CUDA source build), an NVIDIA driver (`nvidia-smi` on PATH; the wheel's torch 2.8.0
# is built for CUDA 12.8, so a recent R570+ driver is best), Python 3.9-3.13 with the venv module
# (PYTHON=python3.12 to choose one), ~12 GB of disk and access to PyPI (or PIP_INDEX_URL). --force skips the
# GPU and architecture checks (for building an environment on a machine without a GPU, e.g. for an image).
#
# Idempotent: a stamp records the sha256 of requirements.txt and the Python version; a second run with
# nothing changed only re-checks the CLI. An interrupted run is redone from the package step.
# Progress: `step N/M: ...` lines on stdout, then PREFIX/bin/vllm as the last stdout line. On failure:
# one `install-vllm: error: ...` line on stderr and a non-zero exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
reqs=$here/requirements.txt
python=${PYTHON:-python3}
force=0
prefix=
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    -h | --help)
      sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*)
      echo "install-vllm: error: unknown option $arg (usage: install.sh [PREFIX] [--force])" >&2
      exit 2
      ;;
    *)
      if [ -n "$prefix" ]; then
        echo "install-vllm: error: more than one PREFIX given ($prefix, $arg)" >&2
        exit 2
      fi
      prefix=$arg
      ;;
  esac
done
prefix=${prefix:-${XDG_DATA_HOME:-$HOME/.local/share}/dmr-supervisor/engines/vllm}
case $prefix in /*) ;; *) prefix=$PWD/$prefix ;; esac # venvs hard-code their path: make it absolute
steps=5
step=0
log_file=

fail() {
  local detail=""
  if [ -n "$log_file" ] && [ -s "$log_file" ]; then
    detail=$(grep -v '^\s*$' "$log_file" | tail -n 1 | cut -c1-300)
    [ -n "$detail" ] && detail=" (last output: $detail; full log: $log_file)"
  fi
  echo "install-vllm: error: step $step/$steps: $*$detail" >&2
  exit 1
}
progress() {
  step=$((step + 1))
  echo "step $step/$steps: $*"
}
logged() {
  local what=$1
  shift
  "$@" >>"$log_file" 2>&1 || fail "$what"
}

[ -f "$reqs" ] || {
  echo "install-vllm: error: $reqs is missing" >&2
  exit 1
}
pin=$(sed -n 's/^vllm==\([^[:space:];#]*\).*/\1/p' "$reqs" | head -n 1)
[ -n "$pin" ] || {
  echo "install-vllm: error: $reqs pins no vllm==VERSION" >&2
  exit 1
}

# ---- 1: the machine -------------------------------------------------------------------------------
os=$(uname -s)
arch=$(uname -m)
if [ "$force" = 1 ]; then
  progress "checking the machine: $os $arch (--force: GPU and architecture checks skipped)"
else
  progress "checking the machine ($os $arch): vLLM needs Linux (x86_64 or aarch64) and an NVIDIA driver"
  [ "$os" = Linux ] || fail "vLLM runs on Linux with an NVIDIA GPU; this is $os (use --force to try anyway)"
  case $arch in
    x86_64 | aarch64) ;;
    *) fail "vllm $pin has no $arch wheel on PyPI, only x86_64 and aarch64 (pip would build it from source with the CUDA toolkit for hours); use --force to try anyway" ;;
  esac
  command -v nvidia-smi >/dev/null 2>&1 ||
    fail "no NVIDIA GPU driver found (nvidia-smi is not on PATH); vLLM needs an NVIDIA GPU. Use --force to install anyway"
  gpus=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null) ||
    fail "nvidia-smi is there but fails (is the NVIDIA kernel driver loaded?); use --force to install anyway"
  [ -n "$gpus" ] || fail "nvidia-smi lists no GPU; use --force to install anyway"
  echo "$gpus" | sed 's/^/  GPU (name, driver, memory): /'
fi

# ---- 2: the interpreter ---------------------------------------------------------------------------
progress "checking $python: vllm $pin needs Python 3.9 to 3.13 with the venv module"
command -v "$python" >/dev/null 2>&1 || fail "no $python on PATH (install python3 and python3-venv, or set PYTHON)"
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || fail "$python does not run"
echo "  Python $pyver ($(command -v "$python"))"
"$python" -c 'import sys; sys.exit(not ((3, 9) <= sys.version_info[:2] < (3, 14)))' ||
  fail "$python is Python $pyver; vllm $pin supports 3.9 to 3.13 (set PYTHON=python3.12, for example)"
"$python" -c 'import venv, ensurepip' >/dev/null 2>&1 ||
  fail "$python lacks the venv/ensurepip modules (apt-get install python3-venv)"

# ---- 3: the venv ----------------------------------------------------------------------------------
mkdir -p "$prefix" 2>/dev/null || fail "cannot create $prefix"
[ -w "$prefix" ] || fail "$prefix is not writable"
log_file=$prefix/install.log
stamp=$prefix/.requirements.stamp
want="$(sha256sum "$reqs" | cut -d' ' -f1) $pyver"
vpy=$prefix/bin/python
if [ -x "$vpy" ] && "$vpy" -c 'import sys' >/dev/null 2>&1 &&
  [ "$("$vpy" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$pyver" ]; then
  progress "virtual environment $prefix already there (Python $pyver)"
else
  progress "creating a virtual environment at $prefix (Python $pyver)"
  rm -f "$stamp" "$prefix/version"
  logged "could not create a virtual environment at $prefix" "$python" -m venv --clear "$prefix"
fi
pip=("$vpy" -m pip --disable-pip-version-check --no-input)

# ---- 4: the packages ------------------------------------------------------------------------------
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$prefix/bin/vllm" ]; then
  progress "vllm $pin already installed (requirements.txt unchanged)"
else
  rm -f "$stamp" "$prefix/version" # an interrupted install is redone next time
  free_kb=$(df -Pk "$prefix" | awk 'NR == 2 { print $4 }')
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $((12 * 1024 * 1024)) ] && [ "$force" != 1 ]; then
    fail "only $((free_kb / 1024 / 1024)) GiB free under $prefix; vllm with torch and CUDA libraries takes ~12 GiB (use --force to try anyway)"
  fi
  echo "=== $(date -u +%FT%TZ) pip install -r $reqs" >>"$log_file"
  progress "installing vllm $pin with pip (torch 2.8 and CUDA 12.8 libraries: ~10 GB, several minutes)"
  logged "pip install -r requirements.txt failed" "${pip[@]}" install -r "$reqs"
  echo "$want" >"$stamp"
fi

# ---- 5: the CLI and the version file ------------------------------------------------------------------
progress "checking $prefix/bin/vllm and writing $prefix/version"
[ -x "$prefix/bin/vllm" ] || fail "pip installed no $prefix/bin/vllm"
version=$("$vpy" -c 'import importlib.metadata as m; print(m.version("vllm"))' 2>>"$log_file") ||
  fail "cannot read the installed vllm version"
[ "$version" = "$pin" ] || fail "installed vllm is $version, requirements.txt pins $pin"
logged "$prefix/bin/vllm --version does not run" "$prefix/bin/vllm" --version
if [ "$(cat "$prefix/version" 2>/dev/null)" != "$version" ]; then
  echo "$version" >"$prefix/version.tmp" && mv "$prefix/version.tmp" "$prefix/version" ||
    fail "could not write $prefix/version"
fi
echo "$prefix/bin/vllm"
