#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and llama-server, from the sources vendored in the
# llama-cpp-python package setup.sh pins, into dist/llama-peer-BACKEND-linux-x86_64.tar.xz:
# the peer the bench kit compares against (`run.sh --peer DIR`, DIR the unpacked folder;
# the kit brings the Vulkan loader). Static binaries, portable x86-64 code.
#
#   bash scripts/build-peer.sh vulkan|cpu
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/llama-cpp-sdist.sh

backend=${1:-}
case "$backend" in
    vulkan) packages=(cmake g++ libvulkan-dev glslc spirv-headers); flags=(-DGGML_VULKAN=ON) ;;
    cpu) packages=(cmake g++); flags=() ;;
    *) echo "usage: bash scripts/build-peer.sh vulkan|cpu" >&2; exit 2 ;;
esac
log() { printf '[build-peer] %s\n' "$*" >&2; }

missing=()
for pkg in "${packages[@]}" curl xz-utils; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

work="${CINDER_HOME:-$HOME/.cache/cinder}/peer-build"
mkdir -p "$work"
sdist="$work/$LLAMA_CPP_SDIST_DIR.tar.gz"
if ! { [ -f "$sdist" ] && echo "$LLAMA_CPP_SDIST_SHA256  $sdist" | sha256sum -c --status; }; then
    log "fetching $LLAMA_CPP_SDIST_URL"
    curl -fsSL -o "$sdist" "$LLAMA_CPP_SDIST_URL"
    echo "$LLAMA_CPP_SDIST_SHA256  $sdist" | sha256sum -c --status || { log "sha256 mismatch for $sdist"; exit 1; }
fi
src="$work/$LLAMA_CPP_SDIST_DIR/vendor/llama.cpp"
[ -d "$src" ] || tar -xzf "$sdist" -C "$work" "$LLAMA_CPP_SDIST_DIR/vendor/llama.cpp"

# This llama.cpp's Vulkan backend asks the validation layer for best-practice checks through
# VK_EXT_layer_settings (Vulkan headers 1.3.261 and later); Debian 12's libvulkan-dev has
# 1.3.239. With older headers the request is left out: the layer is never loaded in a
# benchmark, so the kernels and their speed are the same.
vulkan_source="$src/ggml/src/ggml-vulkan/ggml-vulkan.cpp"
if [ "$backend" = vulkan ] && ! grep -q VK_EXT_layer_settings /usr/include/vulkan/vulkan_core.h \
    && grep -q LayerSettingsCreateInfoEXT "$vulkan_source"; then
    log "Vulkan headers older than 1.3.261: building without the validation layer's settings"
    perl -0pi -e '
        s/const bool layer_settings = ggml_vk_instance_layer_settings_available\(\);/const bool layer_settings = false;/;
        s/    VkBool32 enable_best_practice.*?layer_setting_info\(settings\);\n//s;
        s/extensions, &layer_setting_info\)/extensions, nullptr)/;
    ' "$vulkan_source"
    grep -q LayerSettingsCreateInfoEXT "$vulkan_source" && { log "could not patch $vulkan_source"; exit 1; }
fi

build="$work/build-$backend"
log "building llama-bench and llama-server ($backend) in $build"
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF "${flags[@]}" >/dev/null
cmake --build "$build" --target llama-bench llama-server -j "$(nproc)" >/dev/null

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
peer="$stage/llama-peer-$backend"
mkdir -p "$peer" dist
cp "$build/bin/llama-bench" "$build/bin/llama-server" "$peer/"
strip "$peer"/llama-*
out="dist/llama-peer-$backend-linux-x86_64.tar.xz"
tar -C "$stage" -cJf "$out" "llama-peer-$backend"
log "wrote $out ($(($(stat -c %s "$out") / 1024 / 1024)) MiB)"
