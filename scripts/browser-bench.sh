#!/usr/bin/env bash
# The page's CPU and WebGPU paths and wllama (llama.cpp in WebAssembly, npm
# @wllama/wllama 3.8.1: one thread, as a page without cross-origin isolation runs it, and two
# in an isolated one) on the same GGUF file in the same headless Chromium, beside an empty
# page: first-token time, decode tok/s and the browser's peak resident memory for each
# (tests/browser/bench.cjs).
#
#   bash scripts/browser-bench.sh [--model PATH] [--max-tokens N] [--prompt TEXT]
#                                 [--engines blank,cinder-cpu,cinder-gpu,wllama,wllama-2]
#
# Needs what scripts/setup.sh installs (Chromium, Node.js with playwright-core) and the demo
# built (scripts/build-web.sh); installs wllama into ~/.cache/cinder/node.
set -euo pipefail
cd "$(dirname "$0")/.."

model="${CINDER_MODEL:-$HOME/.cache/cinder/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
max_tokens=64
prompt="Once upon a time, in a small village by the sea, there lived"
engines="blank,cinder-cpu,cinder-gpu,wllama,wllama-2"
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --max-tokens) max_tokens="$2"; shift 2 ;;
        --prompt) prompt="$2"; shift 2 ;;
        --engines) engines="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -f web/dist/index.html ] || { echo "web/dist is missing: run bash scripts/build-web.sh" >&2; exit 1; }
NODE_DIR="${CINDER_HOME:-$HOME/.cache/cinder}/node"
WLLAMA="$NODE_DIR/node_modules/@wllama/wllama"
if [ "$(node -p "require('$WLLAMA/package.json').version" 2>/dev/null)" != 3.8.1 ]; then
    echo "[browser-bench] installing @wllama/wllama 3.8.1 into $NODE_DIR" >&2
    npm install --silent --prefix "$NODE_DIR" @wllama/wllama@3.8.1 >/dev/null
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo build --quiet
root="$(mktemp -d)"
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$root"' EXIT
cp -r web/dist/. "$root/"
mkdir -p "$root/wllama" && cp -r "$WLLAMA/esm" "$root/wllama/"
echo '<!doctype html><title>blank</title>' > "$root/blank.html"
log="$root/serve.log"
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
"$target_dir/debug/cinder" serve --port 0 --web "$root" --model "$model" --device cpu 2>"$log" &
server=$!
for _ in $(seq 600); do
    address="$(sed -n 's/^listening on http:\/\///p' "$log")"
    [ -n "$address" ] && break
    sleep 0.5
done
[ -n "${address:-}" ] || { cat "$log" >&2; exit 1; }
spec="$(python3 -c 'import json, sys; print(json.dumps({"prompt": sys.argv[1], "max_tokens": int(sys.argv[2]), "engines": sys.argv[3].split(",")}))' "$prompt" "$max_tokens" "$engines")"
node tests/browser/bench.cjs "http://$address/" "$spec"
