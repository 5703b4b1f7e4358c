#!/usr/bin/env bash
# Makes sure the dashboard's browser test can run and prints the chromium path (last stdout line): Debian's chromium
# (apt, when missing) and playwright-core pinned in tests/browser/package-lock.json (npm ci, when missing or stale).
# Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  echo "browser-env: installing Debian's chromium" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >&2
fi
if ! command -v npm >/dev/null; then
  echo "browser-env: npm is required (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
stamp=tests/browser/node_modules/.lock-sha256
want=$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "browser-env: npm ci (playwright-core)" >&2
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error >&2
  echo "$want" >"$stamp"
fi
echo "$chromium"
