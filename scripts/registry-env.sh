#!/usr/bin/env bash
# Makes sure a real OCI distribution registry is available for the registry push/pull tests and prints its path
# as the last stdout line: Debian's `docker-registry` package (2.8.2, the CNCF distribution registry), installed
# with apt when `docker-registry` is not on PATH. Idempotent: when it is installed this only prints the path.
# The tests start it themselves on 127.0.0.1 with a generated config (tests/integration/registry.py); the
# package's own service is not wanted and is stopped/disabled if the install started it.
# Progress goes to stderr.
set -euo pipefail

log() { echo "registry-env: $*" >&2; }

if bin=$(command -v docker-registry 2>/dev/null); then
  echo "$bin"
  exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v apt-get >/dev/null 2>&1 || { log "no docker-registry on PATH and no apt-get to install it"; exit 1; }

log "installing Debian's docker-registry"
# Keep the package's init script / unit from starting a registry on :5000 during the install.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
  added_policy=1
fi
cleanup() { if [ "$added_policy" = 1 ]; then as_root rm -f "$policy"; fi; }
trap cleanup EXIT

as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >&2

# The package enables a system service (0.0.0.0:5000) for the next boot: the tests never use it, turn it off.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  as_root systemctl disable --now docker-registry.service >&2 || true
fi

bin=$(command -v docker-registry 2>/dev/null || true)
[ -n "$bin" ] || { log "docker-registry still not on PATH after the install"; exit 1; }
log "installed $("$bin" --version 2>/dev/null || echo "$bin")"
echo "$bin"
