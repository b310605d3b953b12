#!/usr/bin/env bash
# cinder's GPU benchmark kit. On a Linux x86-64 host with a GPU driver (no Rust, no network,
# no model needed): prints the adapter, writes synthetic models, runs `cinder bench` on each
# (with --profile: per-kernel device time) and `cinder bench serve` against a `cinder serve`
# it starts, and the same against llama.cpp's llama-bench / llama-server when --peer DIR
# holds them; on the first model also each KV cache type and LoRA adapters (0, 1 and 8 in
# a batch). Writes results.json and results.md in --out.
#
#   ./run.sh [--peer DIR] [--models NAME[:TYPE],...] [--quick] [--out DIR]
#
# NAME is a `cinder synth --like` name; TYPE q4_0, q4_k, q8_0 or f16 (default: q4_k for
# llama-3.1-8b, q4_0 otherwise). --quick runs few tokens and one concurrency level.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cinder="$here/cinder"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
# The kit measures the GPU path: `auto` would take the CPU on a host whose only adapter is a
# software one (CINDER_DEVICE=cpu measures the CPU backend instead).
export CINDER_DEVICE="${CINDER_DEVICE:-gpu}"

peer=""
models="smollm2-135m,qwen2.5-0.5b,llama-3.2-1b,llama-3.2-3b,llama-3.1-8b"
quick=0
out="$PWD/cinder-bench-results"
while [ $# -gt 0 ]; do
    case "$1" in
        --peer) peer=$(cd "$2" && pwd); shift 2 ;;
        --models) models="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$out/models"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

if [ "$quick" = 1 ]; then
    bench_args=(--decode-tokens 16 --prefill-tokens 64 --batch 1,4)
    extra_args=(--decode-tokens 16 --prefill-tokens 64 --batch 1,4)
    serve_args=(--concurrency 1 --requests 4 --prompt-min 16 --prompt-max 32 --max-tokens 8)
    kv_args=()
else
    bench_args=(--decode-tokens 128 --prefill-tokens 512,2048 --batch 1,8,32,64)
    extra_args=(--decode-tokens 128 --prefill-tokens 2048 --batch 1,32)
    serve_args=(--concurrency 1,8,32,64 --requests 64 --prompt-min 32 --prompt-max 256 --max-tokens 64)
    # 64 sequences of up to 320 tokens of an 8B model.
    kv_args=(--kv-cache-mb 8192)
fi
peer_bench=()
if [ -n "$peer" ]; then
    [ -x "$peer/llama-bench" ] || { echo "run.sh: no llama-bench in $peer" >&2; exit 2; }
    peer_bench=(--peer "llama.cpp=$peer/llama-bench")
fi

"$cinder" --version >&2
servers=()
cleanup() { for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# Prints the port a server's log announces (the last number of the first match of
# `pattern`) once it does.
wait_port() {
    local logfile=$1 pattern=$2 port=""
    for _ in $(seq 600); do
        port=$(grep -o "$pattern" "$logfile" 2>/dev/null | head -1 | grep -o '[0-9]*$' || true)
        [ -n "$port" ] && { echo "$port"; return 0; }
        sleep 0.5
    done
    echo "run.sh: the server did not start; see $logfile" >&2
    return 1
}

free_port() {
    local port
    for port in $(seq 18080 18180); do
        (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return 0; }
    done
}

# The type of a --models entry: its TYPE, else q4_k for llama-3.1-8b and q4_0 for the rest.
entry_type() {
    local name=${1%%:*} type=${1#*:}
    if [ "$type" = "$1" ]; then
        type=q4_0
        [ "$name" = llama-3.1-8b ] && type=q4_k
    fi
    echo "$type"
}

results=()
md="$out/results.md"
: > "$md"
IFS=, read -ra entries <<< "$models"
for entry in "${entries[@]}"; do
    name=${entry%%:*}
    type=$(entry_type "$entry")
    model="$out/models/$name-$type.gguf"
    if [ ! -s "$model" ]; then
        log "writing $name ($type)"
        "$cinder" synth --like "$name" --type "$type" --out "$model"
    fi
    log "cinder bench: $name ($type)"
    {
        echo "## $name ($type)"
        echo
        "$cinder" bench --model "$model" --profile "${bench_args[@]}" "${peer_bench[@]}" \
            --json "$out/bench-$name-$type.json" --plot "$out/batch-$name-$type.svg"
        echo
    } | tee -a "$md"

    log "cinder bench serve: $name ($type)"
    "$cinder" serve --model "$model" --port 0 --max-running 64 "${kv_args[@]}" > "$out/serve-$name-$type.log" 2>&1 &
    servers+=($!)
    port=$(wait_port "$out/serve-$name-$type.log" "listening on http://127.0.0.1:[0-9]*")
    targets=(--target "cinder=http://127.0.0.1:$port")
    if [ -n "$peer" ] && [ -x "$peer/llama-server" ]; then
        peer_port=$(free_port)
        "$peer/llama-server" -m "$model" --port "$peer_port" -np 64 -c $((64 * 512)) -ngl 999 \
            > "$out/llama-server-$name-$type.log" 2>&1 &
        servers+=($!)
        wait_port "$out/llama-server-$name-$type.log" "listening on http://127.0.0.1:$peer_port" > /dev/null
        targets+=(--target "llama.cpp=http://127.0.0.1:$peer_port")
    fi
    vocab=$(grep -o '"vocab_size": [0-9]*' "$out/bench-$name-$type.json" | grep -o '[0-9]*$' || echo 32000)
    {
        "$cinder" bench serve "${targets[@]}" "${serve_args[@]}" --vocab "$vocab" --json "$out/serve-$name-$type.json"
        echo
    } | tee -a "$md"
    cleanup
    servers=()
    results+=("{\"model\": \"$name\", \"type\": \"$type\", \"bench\": $(cat "$out/bench-$name-$type.json"), \"serve\": $(cat "$out/serve-$name-$type.json")}")
done

# The first model with each other KV cache type (f16 ran above), and with its sequences
# spread over 0, 1 and 8 random LoRA adapters.
name=${entries[0]%%:*}
type=$(entry_type "${entries[0]}")
model="$out/models/$name-$type.gguf"
kv_types=(f32 q8_0 q4_0)
{
    echo "## KV cache types and LoRA adapters: $name ($type)"
    echo
    for kv in "${kv_types[@]}"; do
        log "cinder bench: $name ($type), KV cache $kv"
        "$cinder" bench --model "$model" --kv-cache-type "$kv" "${extra_args[@]}" --json "$out/bench-kv-$kv.json"
        echo
    done
    log "cinder bench: $name ($type), LoRA adapters"
    "$cinder" bench --model "$model" --lora-adapters 0,1,8 "${extra_args[@]}" --json "$out/bench-lora.json"
    echo
} | tee -a "$md"

{
    echo "{\"kit\": \"$("$cinder" --version)\", \"quick\": $([ "$quick" = 1 ] && echo true || echo false),"
    echo "\"kv_types\": ["
    for i in "${!kv_types[@]}"; do
        [ "$i" -gt 0 ] && echo ","
        echo "$(cat "$out/bench-kv-${kv_types[$i]}.json")"
    done
    echo "], \"lora\": $(cat "$out/bench-lora.json"), \"runs\": ["
    for i in "${!results[@]}"; do
        [ "$i" -gt 0 ] && echo ","
        echo "${results[$i]}"
    done
    echo "]}"
} > "$out/results.json"
log "wrote $out/results.json and $md"
