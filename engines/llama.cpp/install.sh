#!/usr/bin/env bash
# Installs llama-server (llama.cpp) from pinned source, offline-friendly and cached.
#
# The llama-cpp-python sdist on PyPI carries the whole llama.cpp tree (tools/server included), so the
# only network this needs is the Python package registry. The result lands in
#   ${DMR_ENGINES_DIR:-$XDG_DATA_HOME/dmr-supervisor/engines}/llama.cpp/<pin>/bin/llama-server
# with a `current` symlink beside it, which is where dmr-supervisor looks when neither the config nor
# PATH name a llama-server. A second run finds the binary and costs nothing.
# On a machine with nvcc the CUDA backend is built (-DGGML_CUDA=ON) into a separate `<pin>-cuda` dir.
#
# Prints the installed binary's path as the last line of stdout; progress goes to stderr.
set -euo pipefail

PIN=0.3.36 # llama-cpp-python sdist; vendors llama.cpp commit 0c1e570 (`llama-server --version`)
data=${XDG_DATA_HOME:-$HOME/.local/share}/dmr-supervisor
root=${DMR_ENGINES_DIR:-$data/engines}/llama.cpp
cache=${XDG_CACHE_HOME:-$HOME/.cache}/dmr-supervisor/src
flavour=$PIN
cuda_flag=-DGGML_CUDA=OFF
if command -v nvcc >/dev/null 2>&1 && [ "${DMR_LLAMA_CPU_ONLY:-0}" != 1 ]; then
  flavour=$PIN-cuda
  cuda_flag=-DGGML_CUDA=ON
fi
prefix=$root/$flavour
bin=$prefix/bin/llama-server

log() { echo "install-llama.cpp: $*" >&2; }

if [ -x "$bin" ]; then
  ln -sfn "$flavour" "$root/current"
  echo "$bin"
  exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
  log "installing cmake and a C++ compiler (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ make >&2
fi

mkdir -p "$cache"
sdist=$cache/llama_cpp_python-$PIN.tar.gz
if [ ! -s "$sdist" ]; then
  log "downloading the llama-cpp-python $PIN sdist (llama.cpp source) from PyPI"
  tmpd=$(mktemp -d "$cache/dl.XXXXXX")
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$PIN" -d "$tmpd" >&2
  mv "$tmpd"/llama_cpp_python-$PIN.tar.gz "$sdist"
  rm -rf "$tmpd"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/llama-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "unpacking into $work"
tar -xzf "$sdist" -C "$work"
src=$work/llama_cpp_python-$PIN/vendor/llama.cpp
jobs=$(nproc 2>/dev/null || echo 2)
log "configuring ($cuda_flag)"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  -DBUILD_SHARED_LIBS=OFF "$cuda_flag" >&2
log "building llama-server with $jobs jobs (about 4 minutes on 2 cores)"
cmake --build "$work/build" --target llama-server -j "$jobs" >&2

# Install atomically: a half-copied prefix is never visible under its final name.
mkdir -p "$root"
stage=$(mktemp -d "$root/.stage.XXXXXX")
mkdir -p "$stage/bin"
cp "$work/build/bin/llama-server" "$stage/bin/llama-server"
"$stage/bin/llama-server" --version >"$stage/VERSION" 2>&1 || true
rm -rf "$prefix"
mv "$stage" "$prefix"
ln -sfn "$flavour" "$root/current"
log "installed $(tr '\n' ' ' <"$prefix/VERSION")"
echo "$bin"
