"""Talks to a running `cinder serve` with the official OpenAI Python client.

Usage: openai_client.py BASE_URL MODEL API_KEY. Exits non-zero (with the failed assertion)
when a response is not what an OpenAI-compatible server returns.
"""
import sys

import openai

base_url, model, api_key = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)

# Streaming chat: role first, content in pieces, a finish reason, usage at the end.
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=12,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, roles, reasons, usage = [], [], [], None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.role:
            roles.append(choice.delta.role)
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            reasons.append(choice.finish_reason)
text = "".join(pieces)
print("chat:", repr(text), reasons, usage)
assert roles == ["assistant"], roles
assert "Paris" in text, text
assert reasons in (["stop"], ["length"]), reasons
assert usage is not None and usage.completion_tokens >= 1 and usage.prompt_tokens > 10, usage

# The same chat without streaming gives the same greedy text.
whole = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=12,
    temperature=0,
)
assert whole.choices[0].message.content == text, (whole.choices[0].message.content, text)
assert whole.choices[0].message.role == "assistant"

# Completions with logprobs: the greedy token is the most likely alternative.
completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=3)
lp = completion.choices[0].logprobs
print("completion:", repr(completion.choices[0].text), lp.tokens)
assert len(lp.tokens) == 6 and len(lp.token_logprobs) == 6 and len(lp.top_logprobs) == 6
for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
    assert len(top) == 3 and max(top.values()) == logprob and top[token] == logprob, (token, logprob, top)
assert "".join(lp.tokens) == completion.choices[0].text
assert completion.usage.completion_tokens == 6

# n = 2 with sampling: two choices, both complete.
two = client.completions.create(model=model, prompt="The best fruit is", max_tokens=8, temperature=1.0, n=2, seed=5)
assert [c.index for c in two.choices] == [0, 1], two.choices
assert all(c.finish_reason in ("stop", "length") for c in two.choices)
assert 2 <= two.usage.completion_tokens <= 16, two.usage
assert two.usage.prompt_tokens == len(client.post("/../tokenize", body={"content": "The best fruit is"}, cast_to=object)["tokens"])

# A stop string: the text ends before it and the finish reason is "stop".
free = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
stop_at = free.choices[0].text.find(",", 2)
assert stop_at > 0, free.choices[0].text
stopped = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[","])
print("stop:", repr(free.choices[0].text), "->", repr(stopped.choices[0].text))
assert stopped.choices[0].text == free.choices[0].text[: free.choices[0].text.find(",")]
assert stopped.choices[0].finish_reason == "stop"

# Errors arrive as OpenAI errors.
try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
try:
    client.completions.create(model=model, prompt="x", max_tokens=1, temperature=7)
    raise AssertionError("temperature 7 was accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "temperature", e.body

models = client.models.list()
assert [m.id for m in models.data] == [model], models
print("ok")
