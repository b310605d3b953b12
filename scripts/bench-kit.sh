#!/usr/bin/env bash
# Builds dist/cinder-bench-linux-x86_64.tar.xz: a stripped release `cinder`, the Vulkan
# loader it opens at run time (Debian's libvulkan1) and run.sh, for benchmarking on a bare
# Linux GPU host (see scripts/kit/run.sh). CINDER_BIN=PATH packs an already built binary
# instead of building a release one.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${CINDER_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release -p cinder
    bin=target/release/cinder
fi
# awk reads to the end: exiting at the first match could cut ldconfig off with SIGPIPE,
# which pipefail turns into a silent exit of this script.
loader=$(/sbin/ldconfig -p | awk '$1 == "libvulkan.so.1" && /x86-64/ && !found { found = $NF } END { print found }')
[ -n "$loader" ] || { echo "bench-kit: libvulkan.so.1 not found (apt-get install libvulkan1)" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
kit="$stage/cinder-bench"
mkdir -p "$kit/lib" dist
cp "$bin" "$kit/cinder"
strip "$kit/cinder"
cp -L "$loader" "$kit/lib/libvulkan.so.1"
cp scripts/kit/run.sh "$kit/run.sh"
out=dist/cinder-bench-linux-x86_64.tar.xz
tar -C "$stage" -cJf "$out" cinder-bench
size=$(stat -c %s "$out")
echo "wrote $out ($((size / 1024 / 1024)) MiB)"
if [ "$size" -gt $((48 * 1024 * 1024)) ]; then
    echo "bench-kit: $out is over 48 MiB" >&2
    exit 1
fi
