#!/usr/bin/env python3
"""Writes the model-family reference fixtures under tests/fixtures/ from llama.cpp
(llama-cpp-python):

- architectures.json: for each tiny random-weight model of tests/e2e/architectures.rs (every
  supported architecture and block variant, written by cinder's `tiny` module), its
  SHA-256, llama.cpp's logits and greedy token for 8 steps after a 40-token prompt, and the
  tolerance the test allows: 0.001 where every matrix is F32 (llama.cpp computes in f32, its
  KV cache set to F32), 0.05 where the LM head is the Q8_0 token embedding and 0.25 where
  the weights are quantized (llama.cpp's quantized dot products round activations to 8 bits).
- tokenizer_families.json: llama.cpp's token ids for 150+ strings, special-token parsing on
  and off, on the Gemma 3 vocabulary and on llama.cpp's vocabulary test files of Llama 2
  (SentencePiece), Phi-3 (SentencePiece), Qwen 2 and Llama 3 (byte-level BPE).
- gemma_greedy_f32.json / gemma_greedy.json: llama.cpp's greedy continuations of Gemma 3
  270M (32 tokens, top-5 log-probabilities) on the weights dequantized to F32 (the tight
  reference) and on the Q4_K_M file itself.

Run once by hand after `bash scripts/setup.sh`, not in CI:
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install gguf numpy llama-cpp-python==0.3.36
    /tmp/refenv/bin/python scripts/make_family_fixtures.py
"""
import glob
import hashlib
import os
import sys
import tempfile

import numpy as np
from gguf import GGUFReader
from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reference_fixtures import (  # noqa: E402
    LONG_PASSAGE, TOKENIZER_STRINGS, dequantized_copy, greedy_fixture, write, write_tiny_models,
)

HOME = os.environ.get("CINDER_HOME", os.path.expanduser("~/.cache/cinder"))
GEMMA = os.path.join(HOME, "models", "gemma-3-270m-q4_k_m.gguf")
VOCABS = {
    "gemma3": GEMMA,
    "llama_spm": os.path.join(HOME, "vocab", "ggml-vocab-llama-spm.gguf"),
    "phi3": os.path.join(HOME, "vocab", "ggml-vocab-phi-3.gguf"),
    "qwen2": os.path.join(HOME, "vocab", "ggml-vocab-qwen2.gguf"),
    "llama_bpe": os.path.join(HOME, "vocab", "ggml-vocab-llama-bpe.gguf"),
}
GGML_TYPE_F32 = 0

# Beside the default model's strings: SentencePiece-specific whitespace, control-token texts
# of these families, byte fallback and long words.
FAMILY_STRINGS = [
    "<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "[INST] Hello [/INST]", "<|user|>\nHi<|end|>\n<|assistant|>\n", "<|begin_of_text|><|start_header_id|>user",
    "<|eot_id|>", "<|endoftext|>text<|endoftext|>", "<unused0>", "<0x41>", "<0xZZ>",
    "\t\t\t", "\t \t \t", " " * 40, "a" + " " * 33 + "b", "\n\n\n\n\n", " \n\n ", "\r\r\n", "x\u3000y",
    "\u2581already marked", "\u2581\u2581", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "1234567890", "٠١٢٣٤", "3.141592653589793", "2024-11-30T19:36:07Z", "0b1010_1100",
    "Ǆ ǅ ǆ", "İstanbul", "ﬀ ﬃ", "👍🏽👍🏿", "🧑‍💻 coder", "\u0301 combining", "aaaaaaaaaaaaaaaaaaaaaaaa",
    "The  quick   brown    fox", "trailing tabs\t\t", " leading and trailing ", "x" * 3 + "\n" * 3 + "y",
    "```python\nprint('hi')\n```", "<html>\n  <body>\n    <p>Hi</p>\n  </body>\n</html>",
]
STRINGS = TOKENIZER_STRINGS + FAMILY_STRINGS

GEMMA_LONG = LONG_PASSAGE + " " + LONG_PASSAGE.replace("In the end, what matters most is", "") + (
    " Looking back over all of this, the lesson is")
GEMMA_PROMPTS = [
    ("short", "The capital of France is"),
    ("story", "Once upon a time, in a small village,"),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("digits", "Count from one to ten: 1, 2, 3,"),
    ("french", "Le petit chat est"),
    ("qa", "Question: What is the boiling point of water in Celsius?\nAnswer:"),
    ("list", "Three things to pack for a hike:\n1."),
    ("turn", "<start_of_turn>user\nName a planet.<end_of_turn>\n<start_of_turn>model\n"),
    ("long", GEMMA_LONG),
]


def vocab_only(path):
    return Llama(model_path=path, vocab_only=True, verbose=False)


def tokenizer_fixture():
    families = {}
    for name, path in VOCABS.items():
        llm = vocab_only(path)
        cases = []
        for text in STRINGS:
            raw = text.encode("utf-8")
            cases.append({
                "text": text,
                "ids": llm.tokenize(raw, add_bos=False, special=False),
                "ids_special": llm.tokenize(raw, add_bos=False, special=True),
                "ids_add_special": llm.tokenize(raw, add_bos=True, special=True),
            })
        families[name] = {"file": os.path.basename(path), "cases": cases}
        print(f"{name}: {len(cases)} strings")
    assert len(STRINGS) >= 150, len(STRINGS)
    return {"families": families}


def architectures_fixture():
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_models(tmp)
        for path in sorted(glob.glob(os.path.join(tmp, "*.gguf"))):
            name = os.path.basename(path)[:-len(".gguf")]
            if name.endswith("_kv"):
                continue  # make_kv_type_fixtures.py's
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            # llama.cpp multiplies quantized matrices (the weights of the _q variants, the
            # Q8_0 token embedding as a tied LM head) with activations rounded to 8 bits.
            tied = "output.weight" not in {t.name for t in GGUFReader(path).tensors}
            tolerance = 0.25 if "_q" in name else 0.05 if tied else 0.001
            llm = Llama(model_path=path, n_ctx=512, n_batch=512, logits_all=True, n_threads=2, seed=0,
                        verbose=False, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
            vocab = llm.n_vocab()
            prompt = [3 + (i * 37 + 11) % (vocab - 3) for i in range(40)]
            llm.eval(prompt)
            steps = []
            for _ in range(8):
                logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
                token = int(np.argmax(logits))
                steps.append({"id": token, "logits": [round(float(v), 5) for v in logits]})
                llm.eval([token])
            models[name] = {
                "sha256": digest,
                "prompt_ids": prompt,
                "tolerance": tolerance,
                "steps": steps,
            }
            print(f"{name}: greedy {[s['id'] for s in steps]}")
    return {"models": models}


def gemma_fixtures():
    llm = Llama(model_path=GEMMA, n_ctx=2048, n_batch=512, logits_all=True, n_threads=2, seed=0, verbose=False)
    long_ids = llm.tokenize(GEMMA_LONG.encode("utf-8"), add_bos=True, special=True)
    assert len(long_ids) > 512, f"the long prompt must cross the 512-token window: {len(long_ids)}"
    quantized = greedy_fixture(llm, GEMMA_PROMPTS, GEMMA, add_bos=True)
    write("gemma_greedy.json", quantized)
    with tempfile.TemporaryDirectory() as tmp:
        f32_path = os.path.join(tmp, "gemma-f32.gguf")
        dequantized_copy(GEMMA, f32_path)
        f32 = Llama(model_path=f32_path, n_ctx=2048, n_batch=512, logits_all=True, n_threads=2, seed=0,
                    verbose=False, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
        fixture = greedy_fixture(f32, GEMMA_PROMPTS, GEMMA, add_bos=True)
        fixture["weights"] = "dequantized to F32"
        write("gemma_greedy_f32.json", fixture)


def main():
    what = sys.argv[1:] or ["tokenizers", "architectures", "gemma"]
    if "tokenizers" in what:
        write("tokenizer_families.json", tokenizer_fixture())
    if "architectures" in what:
        write("architectures.json", architectures_fixture())
    if "gemma" in what:
        gemma_fixtures()


if __name__ == "__main__":
    main()
