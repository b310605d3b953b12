#!/usr/bin/env bash
# Sets up a fresh machine (system packages, the default model), builds the browser demo
# (the browser tests load it) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-build
bash scripts/build-web.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo test --workspace --no-fail-fast "$@"
