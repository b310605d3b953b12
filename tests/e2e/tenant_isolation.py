"""A quiet tenant's time to first token, alone and next to a noisy tenant, with the official
OpenAI Python client against a running `cinder serve` that has both tenants configured.

Usage: tenant_isolation.py BASE_URL MODEL QUIET_KEY NOISY_KEY NOISY_CLIENTS. The quiet tenant
sends one streaming chat request at a time; the noisy one keeps NOISY_CLIENTS going at once.
Prints one JSON line: the quiet tenant's TTFTs (seconds) alone and under noise, their p95,
and the noisy tenant's requests answered and refused.
"""
import json
import sys
import threading
import time

import openai

base_url, model, quiet_key, noisy_key, noisy_clients = sys.argv[1:6]
QUIET_REQUESTS = 12


def client(key):
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)


def ttft(c, content, max_tokens):
    """Seconds from sending a streaming chat request to its first content."""
    start = time.monotonic()
    stream = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    first = None
    for chunk in stream:
        if first is None and any(choice.delta.content for choice in chunk.choices):
            first = time.monotonic() - start
    return first


def p95(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def quiet_run():
    c = client(quiet_key)
    return [ttft(c, f"Name a color. ({i})", 8) for i in range(QUIET_REQUESTS)]


ttft(client(quiet_key), "Warm up.", 4)
alone = quiet_run()

stop = threading.Event()
counts = {"answered": 0, "refused": 0}
lock = threading.Lock()


def noisy():
    c = client(noisy_key)
    i = 0
    while not stop.is_set():
        i += 1
        try:
            ttft(c, f"Write a long story about a dragon number {i}.", 48)
            outcome = "answered"
        except openai.RateLimitError:
            outcome = "refused"
            time.sleep(0.5)
        with lock:
            counts[outcome] += 1


threads = [threading.Thread(target=noisy) for _ in range(int(noisy_clients))]
for t in threads:
    t.start()
time.sleep(3.0)  # let the noise build up
noisy_ttft = quiet_run()
stop.set()
for t in threads:
    t.join()

print(json.dumps({
    "quiet_alone_s": alone,
    "quiet_with_noise_s": noisy_ttft,
    "p95_alone_s": p95(alone),
    "p95_with_noise_s": p95(noisy_ttft),
    "noisy": counts,
}))
