#!/usr/bin/env bash
# Builds the browser demo into web/dist: the cinder-wasm crate for wasm32, its JavaScript
# bindings (wasm-bindgen CLI of exactly the crate's version), wasm-opt, and the page.
# Installs what is missing: the wasm32 target, wasm-bindgen-cli (cargo install, ~10-20 min
# once), binaryen's wasm-opt (npm, into ~/.cache/cinder/node).
# CINDER_WEB_PROFILE picks the cargo profile (default: release; no LTO, so it builds in minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${CINDER_WEB_PROFILE:-release}"
NODE_DIR="${CINDER_HOME:-$HOME/.cache/cinder}/node"
BINARYEN_PKG="binaryen@132.0.0"
OUT=web/dist

log() { printf '[build-web] %s\n' "$*" >&2; }

# The wasm-bindgen version the crate resolved to; the CLI must match it exactly.
bindgen_version() {
    awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

install_tools() {
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
        log "adding the wasm32-unknown-unknown target"
        rustup target add wasm32-unknown-unknown
    fi
    local want
    want="$(bindgen_version)"
    [ -n "$want" ] || { log "no wasm-bindgen in Cargo.lock"; exit 1; }
    if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
        log "installing wasm-bindgen-cli $want (once; takes minutes)"
        cargo install --quiet wasm-bindgen-cli --version "$want"
    fi
    if [ ! -x "$NODE_DIR/node_modules/.bin/wasm-opt" ]; then
        command -v npm >/dev/null || { log "npm not found: run scripts/setup.sh first"; exit 1; }
        log "installing $BINARYEN_PKG (wasm-opt) into $NODE_DIR"
        npm install --silent --prefix "$NODE_DIR" "$BINARYEN_PKG" >/dev/null
    fi
}

target_dir() {
    cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

install_tools
log "building cinder-wasm ($PROFILE)"
# SIMD128 for the CPU kernels (every browser with WebAssembly SIMD: Chrome 91+, Firefox 89+,
# Safari 16.4+).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+simd128" cargo build -p cinder-wasm --target wasm32-unknown-unknown --profile "$PROFILE"
profile_dir="$PROFILE"
[ "$PROFILE" = dev ] && profile_dir=debug
wasm="$(target_dir)/wasm32-unknown-unknown/$profile_dir/cinder_wasm.wasm"

rm -rf "$OUT"
mkdir -p "$OUT/pkg"
wasm-bindgen --target web --no-typescript --out-dir "$OUT/pkg" "$wasm"
log "wasm-opt"
# The features rustc's wasm32 target emits, no more: browsers reject some newer ones.
"$NODE_DIR/node_modules/.bin/wasm-opt" -O2 --strip-debug --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue --enable-simd \
    "$OUT/pkg/cinder_wasm_bg.wasm" -o "$OUT/pkg/cinder_wasm_bg.opt.wasm"
mv "$OUT/pkg/cinder_wasm_bg.opt.wasm" "$OUT/pkg/cinder_wasm_bg.wasm"
cp web/index.html web/app.js web/cinder.js web/core.js web/worker.js "$OUT/"
raw=$(stat -c %s "$OUT/pkg/cinder_wasm_bg.wasm")
gz=$(gzip -9 -c "$OUT/pkg/cinder_wasm_bg.wasm" | wc -c)
log "$OUT ready: cinder_wasm_bg.wasm $((raw / 1024)) KiB ($((gz / 1024)) KiB gzip)"
