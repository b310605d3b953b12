#!/usr/bin/env python3
"""Writes the reference fixtures under tests/fixtures/ from independent implementations:

- tokenizer.json: token ids from llama.cpp's tokenizer (llama-cpp-python) for many strings,
  with special-token parsing on and off.
- greedy.json: llama.cpp's greedy continuations (32 tokens, end-of-generation ignored) for
  several prompts, with the top-5 log-probabilities at every generated position.
- greedy_f32.json: the same from llama.cpp running the same weights dequantized to F32.
  llama.cpp's Q4_1 dot products quantize activations to 8 bits; on identical F32 weights it
  computes in f32 like cinder's dequantized path does, which makes it the tight reference.
- dequant.json: blocks of every supported GGUF type and the values the `gguf` Python
  package's own dequantizer gives for them (real blocks from the default model where it
  has that type, random blocks otherwise).

Run once by hand, not in CI:
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install gguf numpy llama-cpp-python
    /tmp/refenv/bin/python scripts/make_reference_fixtures.py [MODEL.gguf]
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")
MODEL = sys.argv[1] if __name__ == "__main__" and len(sys.argv) > 1 else os.path.expanduser(
    "~/.cache/cinder/models/SmolLM2-135M-Instruct.Q4_1.gguf")

TOKENIZER_STRINGS = [
    "", " ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "a", "A", "hello", "Hello world",
    "Hello, world!", " leading space", "trailing space ", "double  space", "tab\tseparated",
    "line one\nline two", "windows\r\nline", "multiple\n\n\nnewlines", "   indented code",
    "It's", "I'm", "you're", "we've", "they'll", "she'd", "IT'S LOUD", "don't stop", "'quoted'",
    "0", "7", "42", "123", "2024", "3.14159", "1,000,000", "-17", "+1 (555) 123-4567", "v1.2.3",
    "0x1F", "1e-5", "12abc34", "abc123def", "٣٤٥", "¹²³", "Ⅻ", "½ cup",
    "café", "naïve", "Ünïcödé", "straße", "Ελληνικά", "Русский текст", "עברית", "العربية",
    "हिन्दी", "ภาษาไทย", "中文字符", "日本語のテキスト", "한국어 문장", "混合 mixed テキスト",
    "😀", "🦀 Rust", "👨‍👩‍👧‍👦", "🇫🇷", "emoji 🎉🎉🎉 party", "❤️", "a\u200bb", "\u00a0nbsp",
    "def f(x):\n    return x * 2\n", "fn main() { println!(\"hi\"); }", "if (a && b || !c) {}",
    "<div class=\"x\">text</div>", "SELECT * FROM t WHERE id = 1;", "x += 1; y -= 2;",
    "path/to/file.txt", "https://example.com/a?b=c&d=e", "user@example.com", "#hashtag @mention",
    "$100.00", "50%", "a+b=c", "<>=^~|", "...", "!!!???", "---", "***bold***", "__init__",
    "camelCaseWord", "snake_case_word", "SCREAMING_CASE", "kebab-case-word", "ALLCAPS",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>",
    "text<|im_end|>more", "<repo_name>", "<|im_start", "im_start|>", "< |im_start| >",
    "The quick brown fox jumps over the lazy dog.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "    four spaces", "mixed \t whitespace \n here", "end with newline\n", "\n\nstart with newlines",
    "ÀÁÂÃÄÅ", "ﬁ ligature", "Ⓐⓑⓒ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "zalgo z̷̛a̸l̵g̶o̷",
]

LONG_PASSAGE = (
    "The history of computing is a story of layered abstractions. Early machines were programmed "
    "by physically rewiring circuits, and each new problem meant days of careful work with cables "
    "and switches. The stored-program computer changed that: instructions became data, kept in the "
    "same memory as the numbers they operated on, and a machine could be repurposed by loading a "
    "different sequence of words. Assemblers followed, letting programmers write mnemonics instead "
    "of raw binary, and then compilers, which translated whole expressions and loops into machine "
    "code. Each layer hid details of the one beneath it, and each layer was met at first with "
    "suspicion by people who were sure that hand-written code would always be faster. Sometimes they "
    "were right, for a while. But the compilers improved, the machines grew faster, and the time of "
    "the programmer became more expensive than the time of the machine. Operating systems took over "
    "the chores of scheduling programs and sharing memory between them; file systems gave names to "
    "blocks on a disk; networks let one machine ask another for data as if it were local. Today a "
    "single line of a high-level language may set in motion millions of instructions across several "
    "processors, a graphics card, and servers on another continent, and the person who wrote it may "
    "know almost nothing about any of them. This is not a failure of education but the whole point "
    "of abstraction: it lets us build systems far larger than any one mind could hold. The cost is "
    "that when something goes wrong deep in the stack, the symptoms surface far from the cause, and "
    "debugging becomes a kind of archaeology, digging down through layer after layer until the "
    "broken assumption is found. Good engineers learn to move up and down these layers with ease, "
    "and the best tools are the ones that make each layer visible when it needs to be seen. "
    "A profiler that shows where the time goes, a debugger that can stop the world and let us look "
    "around, a log that records not just what happened but why: these are the instruments of the "
    "trade, as important to a programmer as a stethoscope is to a doctor. And like a doctor, a good "
    "engineer knows that the first diagnosis is often wrong. "
    "In the end, what matters most is"
)

CHATML = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
          "<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")

GREEDY_PROMPTS = [
    ("short", "The capital of France is"),
    ("story", "Once upon a time, in a small village,"),
    ("chat_capital", CHATML.format("What is the capital of France?")),
    ("chat_haiku", CHATML.format("Write a haiku about the sea.")),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("digits", "Count from one to ten: 1, 2, 3,"),
    ("french", "Le petit chat est"),
    ("qa", "Q: What is the boiling point of water in Celsius?\nA:"),
    ("long", LONG_PASSAGE),
]
GENERATED = 32
TOP = 5


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def tokenizer_fixture(llm):
    cases = []
    for text in TOKENIZER_STRINGS:
        raw = text.encode("utf-8")
        plain = llm.tokenize(raw, add_bos=False, special=False)
        special = llm.tokenize(raw, add_bos=False, special=True)
        assert llm.detokenize(plain).decode("utf-8") == text, text
        cases.append({"text": text, "ids": plain, "ids_special": special})
    assert len(cases) >= 100, len(cases)
    with_special = llm.tokenize(b"Hello", add_bos=True, special=True)
    return {"model": os.path.basename(MODEL), "cases": cases, "add_special_hello": with_special}


def greedy_fixture(llm, prompts=GREEDY_PROMPTS, model=MODEL, add_bos=False):
    """llama.cpp's greedy continuation of each prompt, with the top log-probabilities."""
    out = []
    for name, prompt in prompts:
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        llm.reset()
        llm.eval(ids)
        steps = []
        for _ in range(GENERATED):
            lp = log_softmax(np.array(llm.scores[llm.n_tokens - 1]))
            top = np.argsort(-lp)[:TOP]
            token = int(top[0])
            steps.append({"id": token, "top": [[int(i), round(float(lp[i]), 5)] for i in top]})
            llm.eval([token])
        out.append({"name": name, "prompt": prompt, "prompt_ids": ids, "steps": steps})
        print(f"{name}: {len(ids)} prompt tokens -> "
              f"{llm.detokenize([s['id'] for s in steps]).decode('utf-8', 'replace')!r}")
    return {"model": os.path.basename(model), "generated": GENERATED, "prompts": out}


def random_blocks(qtype, n_blocks, scale_offsets, rng):
    block_elems, block_bytes = {
        GGMLQuantizationType.Q4_0: (32, 18), GGMLQuantizationType.Q5_0: (32, 22),
        GGMLQuantizationType.Q5_1: (32, 24), GGMLQuantizationType.Q4_K: (256, 144),
        GGMLQuantizationType.Q6_K: (256, 210),
    }[qtype]
    data = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in scale_offsets:
        scales = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        data[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return data.reshape(-1)


def dequant_fixture(reader):
    rng = np.random.default_rng(1234)
    cases = []

    def add(name, qtype, raw):
        raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
        values = dequantize(raw, qtype).astype(np.float32).reshape(-1)
        cases.append({"name": name, "type": qtype.name, "hex": raw.tobytes().hex(),
                      "values": [float(v) for v in values]})

    tensors = {t.name: t for t in reader.tensors}
    q41 = tensors["blk.0.attn_q.weight"]
    add("real Q4_1 blk.0.attn_q.weight", q41.tensor_type, q41.data.reshape(-1)[:20 * 8])
    q80 = tensors["token_embd.weight"]
    add("real Q8_0 token_embd.weight", q80.tensor_type, q80.data.reshape(-1)[:34 * 8])
    f32 = tensors["blk.0.attn_norm.weight"]
    add("real F32 blk.0.attn_norm.weight", f32.tensor_type,
        np.asarray(f32.data[:64], dtype=np.float32).view(np.uint8))
    add("random F16", GGMLQuantizationType.F16,
        (rng.standard_normal(64) * 3).astype(np.float16).view(np.uint8))
    bf16 = (rng.standard_normal(64).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    add("random BF16", GGMLQuantizationType.BF16, bf16.view(np.uint8))
    for qtype, offsets in [(GGMLQuantizationType.Q4_0, [0]), (GGMLQuantizationType.Q5_0, [0]),
                           (GGMLQuantizationType.Q5_1, [0, 2]), (GGMLQuantizationType.Q4_K, [0, 2]),
                           (GGMLQuantizationType.Q6_K, [208])]:
        add(f"random {qtype.name}", qtype, random_blocks(qtype, 4, offsets, rng))
    return {"cases": cases}


def dequantized_copy(src, dst):
    """Writes `src` with every tensor dequantized to F32, metadata unchanged."""
    reader = GGUFReader(src)
    writer = GGUFWriter(dst, arch=reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        writer.add_tensor(t.name, values.reshape(tuple(int(d) for d in reversed(t.shape))),
                          raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def load(path, n_ctx=2048):
    from llama_cpp import Llama  # only here: make_kv_type_fixtures.py imports this file without it

    return Llama(model_path=path, n_ctx=n_ctx, n_batch=512, logits_all=True, n_threads=2,
                 seed=0, verbose=False)


def write_tiny_models(directory):
    """Writes the tiny models of tests/e2e/architectures.rs (each variant and KV-type
    variant, by name) into `directory`."""
    env = dict(os.environ, CINDER_TINY_DIR=directory)
    subprocess.run(["cargo", "test", "--test", "e2e", "write_tiny_architectures", "--", "--ignored"],
                   cwd=ROOT, env=env, check=True)


def write(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("wrote", path)


def main():
    os.makedirs(OUT, exist_ok=True)
    write("dequant.json", dequant_fixture(GGUFReader(MODEL)))
    llm = load(MODEL)
    write("tokenizer.json", tokenizer_fixture(llm))
    write("greedy.json", greedy_fixture(llm))
    with tempfile.TemporaryDirectory() as tmp:
        f32_path = os.path.join(tmp, "f32.gguf")
        dequantized_copy(MODEL, f32_path)
        fixture = greedy_fixture(load(f32_path))
        fixture["weights"] = "dequantized to F32"
        write("greedy_f32.json", fixture)


if __name__ == "__main__":
    main()
