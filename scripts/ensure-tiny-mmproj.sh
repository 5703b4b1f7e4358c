#!/usr/bin/env bash
# The tiny mmproj test model: scripts/ensure-tiny-model.sh mmproj (prints its path).
exec "$(dirname "${BASH_SOURCE[0]}")/ensure-tiny-model.sh" mmproj "$@"
