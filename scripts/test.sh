#!/usr/bin/env bash
# Sets up a fresh machine (system packages, the default model) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-build
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo test --workspace --no-fail-fast "$@"
