#!/usr/bin/env bash
# The browser against native cinder on one device: the headless Chromium page (its WebGPU is
# SwiftShader), native cinder on Chromium's SwiftShader Vulkan driver, and native cinder on
# the machine's own driver, the same prompt and greedy tokens on each. Prints prompt and
# decode tok/s and the ratios.
#
#   bash scripts/browser-vs-native.sh [--model PATH] [--prompt-words N] [--max-tokens N]
#
# Needs what scripts/setup.sh installs (Chromium, Node.js with playwright-core) and the demo
# built (scripts/build-web.sh). The browser's prompt speed counts from the request to the
# first token.
set -euo pipefail
cd "$(dirname "$0")/.."

model=""
words=48
max_tokens=16
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --prompt-words) words="$2"; shift 2 ;;
        --max-tokens) max_tokens="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
icd=/usr/lib/chromium/vk_swiftshader_icd.json
[ -f "$icd" ] || { echo "$icd is missing: scripts/setup.sh installs Chromium" >&2; exit 1; }
[ -f web/dist/index.html ] || { echo "web/dist is missing: run bash scripts/build-web.sh" >&2; exit 1; }
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo build --quiet
cinder=target/debug/cinder
model_args=()
[ -n "$model" ] && model_args=(--model "$model")

prompt=$(python3 -c "
import sys
text = 'Paris is the capital and largest city of France, known for its museums, its river and its architecture, and'
print(' '.join((text.split() * 100)[:int(sys.argv[1])]))" "$words")

# The tokens from `cinder generate`; the speeds from `cinder bench` at the prompt's length,
# which runs once to compile every kernel first, as the page does while it loads.
native() {
    local generated bench prompt_tokens
    generated=$("$cinder" generate "${model_args[@]}" --prompt "$prompt" --max-tokens "$max_tokens" --temperature 0 --ignore-eos --json 2>/dev/null | tail -1)
    bench=$(mktemp)
    prompt_tokens=$(python3 -c "import json, sys; print(len(json.loads(sys.argv[1])['prompt_ids']))" "$generated")
    "$cinder" bench "${model_args[@]}" --prefill-tokens "$prompt_tokens" --decode-tokens "$max_tokens" --json "$bench" >/dev/null 2>&1
    python3 -c "
import json, sys
generated = json.loads(sys.argv[1])
bench = json.load(open(sys.argv[2]))
print(json.dumps({'ids': generated['ids'], 'prompt_ids': generated['prompt_ids'],
                  'prompt_tokens_per_s': bench['prefill_tok_s'], 'decode_tokens_per_s': bench['decode_tok_s']}))" "$generated" "$bench"
    rm -f "$bench"
}
lavapipe=$(native)
swiftshader=$(VK_ICD_FILENAMES=$icd native)

port=$((20000 + RANDOM % 20000))
"$cinder" serve "${model_args[@]}" --web web/dist --port "$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.2
done
spec=$(python3 -c "import json, sys; print(json.dumps({'prompt': sys.argv[1], 'max_tokens': int(sys.argv[2]), 'ui': False, 'timeout_s': 1800}))" "$prompt" "$max_tokens")
browser=$(node tests/browser/demo.cjs "http://127.0.0.1:$port/" "$spec" | tail -1)

python3 - "$lavapipe" "$swiftshader" "$browser" <<'EOF'
import json, sys
lavapipe, swiftshader, browser = (json.loads(a) for a in sys.argv[1:])
prompt_tokens = len(lavapipe["prompt_ids"])
browser_prompt = prompt_tokens / browser["first_token_s"]
rows = [
    ("prompt", browser_prompt, swiftshader["prompt_tokens_per_s"], lavapipe["prompt_tokens_per_s"]),
    ("decode", browser["tokens_per_s"], swiftshader["decode_tokens_per_s"], lavapipe["decode_tokens_per_s"]),
]
same = browser["tokens"] == swiftshader["ids"] == lavapipe["ids"]
print(f"{prompt_tokens}-token prompt, {len(lavapipe['ids'])} greedy tokens; identical on all three: {same}")
print("| tok/s | browser (SwiftShader WebGPU) | native on SwiftShader | native on the machine's driver | browser / native SwiftShader | SwiftShader / machine's driver |")
print("|---|---|---|---|---|---|")
for name, b, s, l in rows:
    print(f"| {name} | {b:.2f} | {s:.2f} | {l:.2f} | {b / s:.2f}x | {s / l:.2f}x |")
EOF
