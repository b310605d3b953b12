#!/usr/bin/env python3
"""Writes tests/fixtures/greedy_f32_lora.json: llama.cpp's greedy continuations of the
prompts of greedy_f32.json on the default model's weights dequantized to F32 (the tight
reference, as there), with random LoRA adapters that `cinder synth-lora` writes (the
fixture records the arguments, so the test writes the same bytes): llama-server with
`--lora` for each, picked per request by its `lora` field.

Run once by hand, not in CI (llama-server from scripts/build-peer.sh, cinder built):
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install gguf numpy
    /tmp/refenv/bin/python scripts/make_lora_fixtures.py LLAMA_SERVER CINDER [MODEL.gguf]
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_kv_type_fixtures import PORT, greedy_with, wait_ready  # noqa: E402
from make_reference_fixtures import GENERATED, OUT, dequantized_copy, write  # noqa: E402
import json  # noqa: E402

SERVER, CINDER = sys.argv[1], sys.argv[2]
MODEL = sys.argv[3] if len(sys.argv) > 3 else os.path.expanduser("~/.cache/cinder/models/SmolLM2-135M-Instruct.Q4_1.gguf")

# Every matrix in f32 at scale 1; four matrices in f16 at scale 0.5.
ADAPTERS = [
    {"name": "all_f32", "scale": 1.0, "synth_lora": ["--rank", "8", "--alpha", "16", "--type", "f32", "--seed", "1"]},
    {"name": "qvo_down_f16", "scale": 0.5,
     "synth_lora": ["--rank", "16", "--alpha", "32", "--type", "f16", "--seed", "2", "--targets", "q,v,o,down"]},
]


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
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(process)
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
    main()
