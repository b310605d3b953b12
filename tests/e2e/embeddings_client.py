"""The OpenAI Python client against cinder's /v1/embeddings on the default model, compared
with llama.cpp's embeddings of the same weights dequantized to F32 (tests/fixtures/
embeddings.json, mean pooling). Arguments: base URL, model name, API key. Prints "ok" last."""
import json
import math
import os
import sys

from openai import OpenAI

base_url, model, key = sys.argv[1:4]
client = OpenAI(base_url=base_url, api_key=key)
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "..", "fixtures", "embeddings.json"), encoding="utf-8") as f:
    fixture = json.load(f)["default"]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def report(what, similarities):
    print(f"{what}: cosine to llama.cpp's " + ", ".join(f"{s:.6f}" for s in similarities))


cases = fixture["f32/mean"]
texts = [c["text"] for c in cases]
# The client asks for base64 unless told otherwise, and decodes it.
answer = client.embeddings.create(model=model, input=texts)
assert answer.model == model and len(answer.data) == len(texts), answer
similarities = [cosine(d.embedding, c["embedding"]) for d, c in zip(answer.data, cases)]
report("texts, F32 weights", similarities)
assert min(similarities) >= 0.999, similarities
quantized = [cosine(d.embedding, c["embedding"]) for d, c in zip(answer.data, fixture["q4_1/mean"])]
report("texts, llama.cpp on the Q4_1 file", quantized)
assert answer.usage.prompt_tokens == sum(len(c["ids"]) for c in cases), answer.usage
for d in answer.data:
    assert abs(sum(x * x for x in d.embedding) - 1) < 1e-4, "unit length"

# Token ids give what their text gives; float and base64 agree.
by_ids = client.embeddings.create(model=model, input=[c["ids"] for c in cases], encoding_format="float")
for a, b in zip(by_ids.data, answer.data):
    assert cosine(a.embedding, b.embedding) > 0.99999
    assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding)) < 1e-6

# `dimensions`: the first ones, renormalised.
cut = client.embeddings.create(model=model, input=texts[0], dimensions=64, encoding_format="float").data[0].embedding
assert len(cut) == 64
head = client.embeddings.create(model=model, input=texts[0], encoding_format="float").data[0].embedding[:64]
norm = math.sqrt(sum(x * x for x in head))
assert max(abs(x - y / norm) for x, y in zip(cut, head)) < 1e-5

# A batch of 32 gives each text what it gets alone.
many = [f"Sentence {i}: " + texts[i % len(texts)] for i in range(32)]
batch = client.embeddings.create(model=model, input=many).data
for i in [0, 13, 31]:
    alone = client.embeddings.create(model=model, input=many[i]).data[0].embedding
    assert cosine(alone, batch[i].embedding) > 0.9999, i
print("ok")
