#!/usr/bin/env bash
# Sets up a fresh machine (system packages, the default model), builds the browser demo
# (the browser tests load it) and runs every test, then a three-minute abuse soak.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-build
bash scripts/build-web.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo test --workspace --no-fail-fast "$@"
# The whole run (no test filter) ends with the server beside an abusive tenant for three
# minutes: the honest clients' p99 time to first token, RSS and failures are checked.
if [ "$#" = 0 ]; then
    python3 scripts/soak.py --abuse --calibrate-s 20 --duration-s 160 \
        --binary "${CARGO_TARGET_DIR:-target}/debug/cinder" --json "${CARGO_TARGET_DIR:-target}/soak-abuse.json"
fi
