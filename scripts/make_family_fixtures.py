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
- embeddings.json: llama.cpp's embeddings (`embedding=True`, pooled, not normalised, F32 KV
  cache) of a few texts: on each tiny model of architectures.json by mean pooling (and cls
  and last on some), and on the default model by mean and last pooling, its weights
  dequantized to F32 (the tight reference) and the Q4_1 file itself. Each text's token ids
  are recorded, so the comparison does not depend on tokenizing.
- tool_templates.json: each family chat template of the vocabulary folder rendered by
  Python's jinja2 as `transformers` renders it (`apply_chat_template(messages, tools=...)`:
  trim_blocks, lstrip_blocks, its `tojson`, `raise_exception`), with and without tools, for
  a first turn and for a tool-call round trip (an assistant's call, the tool's result).

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
DEFAULT_MODEL = os.path.join(HOME, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
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


EMBED_TEXTS = [
    "The capital of France is Paris.",
    "Embeddings turn text into vectors.",
    "def add(a, b):\n    return a + b\n",
    "A much longer passage, so that the prompt runs in more than one chunk of the server's steps: "
    + LONG_PASSAGE[:1200],
]
# llama.cpp's llama_pooling_type.
POOLING = {"mean": 1, "cls": 2, "last": 3}


def embed_all(path, pooling, texts, n_ctx=2048):
    llm = Llama(model_path=path, embedding=True, pooling_type=POOLING[pooling], n_ctx=n_ctx, n_batch=n_ctx,
                n_ubatch=n_ctx, n_threads=2, verbose=False, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    out = []
    for text in texts:
        ids = llm.tokenize(text.encode("utf-8"))
        # One text at a time: its own sequence, pooled over its tokens.
        vector = llm.embed(text, normalize=False)
        out.append({"text": text, "ids": ids, "embedding": [round(float(v), 6) for v in vector]})
    return out


def embeddings_fixture():
    tiny = {}
    extra = {"llama": ["cls", "last"], "qwen3": ["last"], "gemma3": ["last"]}
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_models(tmp)
        for path in sorted(glob.glob(os.path.join(tmp, "*.gguf"))):
            name = os.path.basename(path)[:-len(".gguf")]
            if name.endswith("_kv"):
                continue
            for pooling in ["mean"] + extra.get(name, []):
                tiny[f"{name}/{pooling}"] = {"model": name, "pooling": pooling,
                                             "inputs": embed_all(path, pooling, EMBED_TEXTS[:3], n_ctx=512)}
                print(f"embeddings: {name} {pooling}")
        default = {}
        f32_path = os.path.join(tmp, "default-f32.gguf")
        dequantized_copy(DEFAULT_MODEL, f32_path)
        for pooling in ["mean", "last"]:
            default[f"f32/{pooling}"] = embed_all(f32_path, pooling, EMBED_TEXTS)
            default[f"q4_1/{pooling}"] = embed_all(DEFAULT_MODEL, pooling, EMBED_TEXTS)
            print(f"embeddings: default model {pooling}")
    return {"weights": "default: f32 = the Q4_1 file dequantized to F32; q4_1 = the file itself",
            "tiny": tiny, "default": default}


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city's name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "The time now, <HH:MM> & zone",
                                      "parameters": {"type": "object", "properties": {}}}},
]
TOOL_CONVERSATIONS = {
    "first_turn": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "What's the weather in Paris?"},
    ],
    "round_trip": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call12345", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "tool_call_id": "call12345", "content": "{\"temperature\": 21, \"sky\": \"clear\"}"},
    ],
}
# The special tokens each template refers to, as its model's tokenizer names them.
TEMPLATE_TOKENS = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("", "<|im_end|>"),
    "Qwen-Qwen3-0.6B.jinja": ("", "<|im_end|>"),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("<s>", "</s>"),
    "microsoft-Phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>"),
    "google-gemma-2-2b-it.jinja": ("<bos>", "<eos>"),
}


def tool_templates_fixture():
    import json as json_module

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    # transformers' own `tojson` (chat_template_utils.py): json.dumps, keys in their order.
    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json_module.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    out = {"tools": TOOLS, "conversations": TOOL_CONVERSATIONS, "templates": {}}
    for name, (bos, eos) in TEMPLATE_TOKENS.items():
        with open(os.path.join(HOME, "vocab", "templates", name), encoding="utf-8") as f:
            template = env.from_string(f.read())
        renders = {}
        for conversation, messages in TOOL_CONVERSATIONS.items():
            for tools in (None, TOOLS):
                key = f"{conversation}/{'tools' if tools else 'no_tools'}"
                try:
                    renders[key] = {"text": template.render(messages=messages, tools=tools, add_generation_prompt=True,
                                                            bos_token=bos, eos_token=eos)}
                except jinja2.exceptions.TemplateError as e:
                    renders[key] = {"error": str(e)}
        out["templates"][name] = {"bos_token": bos, "eos_token": eos, "renders": renders}
        print(f"tool templates: {name}: " + ", ".join(f"{k}: {'error' if 'error' in v else len(v['text'])}" for k, v in renders.items()))
    return out


def main():
    what = sys.argv[1:] or ["tokenizers", "architectures", "gemma", "embeddings", "tool_templates"]
    if "tokenizers" in what:
        write("tokenizer_families.json", tokenizer_fixture())
    if "architectures" in what:
        write("architectures.json", architectures_fixture())
    if "gemma" in what:
        gemma_fixtures()
    if "embeddings" in what:
        write("embeddings.json", embeddings_fixture())
    if "tool_templates" in what:
        write("tool_templates.json", tool_templates_fixture())


if __name__ == "__main__":
    main()
