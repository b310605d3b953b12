#!/usr/bin/env python3
"""Writes the LoRA fixtures from llama.cpp's `--lora`, with random adapters that `cinder
synth-lora` writes (each fixture records the arguments, so the test writes the same bytes):

- greedy_f32_lora.json: llama.cpp's greedy continuations of the prompts of greedy_f32.json
  on the default model's weights dequantized to F32 (the tight reference, as there), one
  llama-server with an `--lora` per adapter, picked per request by its `lora` field.
- architectures_lora.json: for each F32 tiny model of tests/e2e/architectures.rs (every
  architecture), an adapter of every matrix it has, and llama.cpp's greedy tokens and top-10
  log-probabilities for 8 steps after a 40-token prompt, its KV cache in f32.

Run once by hand, not in CI (llama-server from scripts/build-peer.sh, cinder built):
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install gguf numpy
    /tmp/refenv/bin/python scripts/make_lora_fixtures.py LLAMA_SERVER CINDER [MODEL.gguf]
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_kv_type_fixtures import NON_ASCII_BYTES, PORT, greedy_with, wait_ready  # noqa: E402
from make_reference_fixtures import GENERATED, OUT, dequantized_copy, write, write_tiny_models  # noqa: E402
import json  # noqa: E402

SERVER, CINDER = sys.argv[1], sys.argv[2]
MODEL = sys.argv[3] if len(sys.argv) > 3 else os.path.expanduser("~/.cache/cinder/models/SmolLM2-135M-Instruct.Q4_1.gguf")

# Every matrix in f32 at scale 1; four matrices in f16 at scale 0.5.
ADAPTERS = [
    {"name": "all_f32", "scale": 1.0, "synth_lora": ["--rank", "8", "--alpha", "16", "--type", "f32", "--seed", "1"]},
    {"name": "qvo_down_f16", "scale": 0.5,
     "synth_lora": ["--rank", "16", "--alpha", "32", "--type", "f16", "--seed", "2", "--targets", "q,v,o,down"]},
]


# The tiny models that are F32 throughout (llama.cpp computes them in f32 too).
TINY = ["llama", "qwen2_biases", "qwen3", "gemma2", "gemma3", "phi3"]
TINY_LORA = ["--rank", "8", "--alpha", "16", "--type", "f32"]


def serve(args):
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(process)
    return process


def architectures_fixture():
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_models(tmp)
        for seed, name in enumerate(TINY, start=1):
            path = os.path.join(tmp, f"{name}.gguf")
            adapter = os.path.join(tmp, f"{name}-lora.gguf")
            synth = TINY_LORA + ["--seed", str(seed)]
            subprocess.run([CINDER, "synth-lora", "--model", path, "--out", adapter, *synth], check=True)
            process = serve([SERVER, "-m", path, "--lora", adapter, "-c", "512", "-t", "2", "-np", "1", "--port", str(PORT),
                             "-ctk", "f32", "-ctv", "f32", "-fa", "off", "--no-warmup"])
            try:
                # Byte tokens, which every tiny vocabulary has.
                prompt = [3 + (i * 37 + 11) % 250 for i in range(40)]
                banned = [[i, False] for i in NON_ASCII_BYTES]
                steps = greedy_with(prompt, {"n_predict": 8, "n_probs": 10, "logit_bias": banned})
            finally:
                process.terminate()
                process.wait()
            models[name] = {"synth_lora": synth, "prompt_ids": prompt, "banned": [NON_ASCII_BYTES.start, NON_ASCII_BYTES.stop], "steps": steps}
            print(f"{name}: greedy {[s['id'] for s in steps]}")
    return {"llama_server_args": "--lora FILE -ctk f32 -ctv f32", "models": models}


def main():
    prompts = json.load(open(os.path.join(OUT, "greedy_f32.json"), encoding="utf-8"))["prompts"]
    with tempfile.TemporaryDirectory() as tmp:
        f32_path = os.path.join(tmp, "f32.gguf")
        dequantized_copy(MODEL, f32_path)
        args = [SERVER, "-m", f32_path, "-c", "2048", "-t", "2", "-np", "1", "--port", str(PORT), "--no-warmup"]
        for i, adapter in enumerate(ADAPTERS):
            path = os.path.join(tmp, f"{adapter['name']}.gguf")
            subprocess.run([CINDER, "synth-lora", "--model", MODEL, "--out", path, *adapter["synth_lora"]], check=True)
            args += ["--lora", path]
        process = serve(args)
        try:
            for i, adapter in enumerate(ADAPTERS):
                # Only this adapter, at its scale.
                lora = [{"id": j, "scale": adapter["scale"] if j == i else 0.0} for j in range(len(ADAPTERS))]
                adapter["prompts"] = []
                for prompt in prompts:
                    steps = greedy_with(prompt["prompt_ids"], {"lora": lora})
                    adapter["prompts"].append({"name": prompt["name"], "prompt_ids": prompt["prompt_ids"], "steps": steps})
                    print(f"{adapter['name']} {prompt['name']}: {[s['id'] for s in steps][:8]}...")
        finally:
            process.terminate()
            process.wait()
    write("greedy_f32_lora.json", {
        "model": os.path.basename(MODEL), "generated": GENERATED, "weights": "dequantized to F32",
        "llama_server_args": "--lora FILE per adapter, chosen by each request's `lora`", "adapters": ADAPTERS,
    })


if __name__ == "__main__":
    if "--architectures" in sys.argv:
        write("architectures_lora.json", architectures_fixture())
    else:
        main()
