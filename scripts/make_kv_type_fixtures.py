#!/usr/bin/env python3
"""Writes tests/fixtures/greedy_f32_kv_<type>.json: llama.cpp's greedy continuations of the
prompts of greedy_f32.json, on the default model's weights dequantized to F32 (the tight
reference, as there), with llama.cpp's KV cache storing keys and values as <type> (q8_0,
q4_0): llama-server with `-ctk <type> -ctv <type> -fa on` (a quantized value cache needs
flash attention). greedy_f32.json itself was made with llama.cpp's default f16 cache.

With `--architectures`, writes tests/fixtures/architectures_kv.json instead: for each tiny
model of tests/e2e/architectures.rs's kv_variants (every architecture, heads of 32 values
or more, F32 weights) and each type (f16, q8_0, q4_0), llama.cpp's greedy tokens and top-10
log-probabilities for 8 steps after a 40-token prompt.

Run once by hand, not in CI (llama-server from scripts/build-peer.sh):
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install gguf numpy
    /tmp/refenv/bin/python scripts/make_kv_type_fixtures.py LLAMA_SERVER [MODEL.gguf | --architectures]
"""
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reference_fixtures import GENERATED, MODEL, OUT, TOP, dequantized_copy, write, write_tiny_models  # noqa: E402

SERVER = sys.argv[1]
TYPES = ["q8_0", "q4_0"]
PORT = 18931


def post(path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def wait_ready(process):
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"llama-server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("llama-server did not become ready")


def greedy(prompt_ids):
    return greedy_with(prompt_ids, {})


def greedy_with(prompt_ids, extra):
    """Its greedy continuation, with the top log-probabilities of each step before sampling
    (as greedy_f32.json has them); `extra` joins the request's body."""
    body = {"prompt": prompt_ids, "n_predict": GENERATED, "n_probs": TOP, "temperature": 0,
            "cache_prompt": False, "ignore_eos": True, "post_sampling_probs": False, **extra}
    answer = post("/completion", body)
    steps = []
    for position in answer["completion_probabilities"]:
        top = [[t["id"], round(t["logprob"], 5)] for t in position["top_logprobs"]]
        steps.append({"id": position["id"], "top": top})
    assert len(steps) == body["n_predict"], answer
    return steps


def main():
    prompts = json.load(open(os.path.join(OUT, "greedy_f32.json"), encoding="utf-8"))["prompts"]
    with tempfile.TemporaryDirectory() as tmp:
        f32_path = os.path.join(tmp, "f32.gguf")
        dequantized_copy(MODEL, f32_path)
        for kv_type in TYPES:
            args = [SERVER, "-m", f32_path, "-c", "2048", "-t", "2", "-np", "1", "--port", str(PORT),
                    "-ctk", kv_type, "-ctv", kv_type, "-fa", "on", "--no-warmup"]
            process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_ready(process)
                out = []
                for prompt in prompts:
                    steps = greedy(prompt["prompt_ids"])
                    out.append({"name": prompt["name"], "prompt": prompt["prompt"], "prompt_ids": prompt["prompt_ids"], "steps": steps})
                    print(f"{kv_type} {prompt['name']}: {[s['id'] for s in steps][:8]}...")
            finally:
                process.terminate()
                process.wait()
            write(f"greedy_f32_kv_{kv_type}.json", {
                "model": os.path.basename(MODEL), "generated": GENERATED, "weights": "dequantized to F32",
                "kv_cache_type": kv_type, "llama_server_args": "-ctk {0} -ctv {0} -fa on".format(kv_type), "prompts": out,
            })


# The tiny vocabularies' byte tokens from 0x80 (byte + 3): the server reports no
# probabilities for a token that leaves a UTF-8 character incomplete, so they are never
# picked (the log-probabilities stay those of the raw logits).
NON_ASCII_BYTES = range(0x80 + 3, 0x100 + 3)


def architectures_fixture():
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_models(tmp)
        for path in sorted(glob.glob(os.path.join(tmp, "*_kv.gguf"))):
            name = os.path.basename(path)[:-len(".gguf")]
            with open(path, "rb") as f:
                case = {"sha256": hashlib.sha256(f.read()).hexdigest(), "banned": [NON_ASCII_BYTES.start, NON_ASCII_BYTES.stop]}
            case["prompt_ids"] = [3 + (i * 37 + 11) % 250 for i in range(40)]
            for kv_type in ["f16"] + TYPES:
                args = [SERVER, "-m", path, "-c", "512", "-t", "2", "-np", "1", "--port", str(PORT),
                        "-ctk", kv_type, "-ctv", kv_type, "-fa", "on", "--no-warmup"]
                process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    wait_ready(process)
                    banned = [[i, False] for i in NON_ASCII_BYTES]
                    case[kv_type] = greedy_with(case["prompt_ids"], {"n_predict": 8, "n_probs": 10, "logit_bias": banned})
                finally:
                    process.terminate()
                    process.wait()
                print(f"{name} {kv_type}: {[s['id'] for s in case[kv_type]]}")
            models[name] = case
    return {"llama_server_args": "-ctk TYPE -ctv TYPE -fa on", "models": models}


if __name__ == "__main__":
    if "--architectures" in sys.argv:
        write("architectures_kv.json", architectures_fixture())
    else:
        main()
