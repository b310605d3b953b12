#!/usr/bin/env python3
"""The server's RSS before, at the peak of and after the biggest bodies its default
`[limits]` allow (and the ones just past them), one at a time: what one request can make
the process hold.

    XDG_RUNTIME_DIR=/tmp python3 scripts/limits_memory.py [--binary target/debug/cinder] [--model PATH]

Prints one line per body: its size, the answer, the time to it, and RSS in MiB. Standard
library only.
"""
import argparse
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

WORDS = "the river stone light city night quiet old new machine garden story".split()


def text(words):
    return " ".join(WORDS[i % len(WORDS)] for i in range(words))


def bodies():
    """(name, path, body) of the biggest bodies each limit allows, and of some past them."""
    chat = "/v1/chat/completions"
    completion = "/v1/completions"
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 8} for i in range(40)}}
    tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": schema}} for i in range(128)]
    # 128 tools of ~1.9 KB of parameters pass the 64 KiB limit only together with fewer tools.
    while len(json.dumps([t["function"]["parameters"] for t in tools])) > 64 << 10:
        tools.pop()
    return [
        ("32 prompts x n=2 (64 sequences), 300 words each", completion,
         {"prompt": [text(300)] * 32, "n": 2, "max_tokens": 4, "ignore_eos": True}),
        ("16 stops of 256 B, 64 stop ids, 1024 logit biases", completion,
         {"prompt": text(50), "max_tokens": 16, "stop": ["x" * 256] * 16, "stop_token_ids": list(range(64)),
          "logit_bias": {str(i): 1 for i in range(1024)}}),
        (f"{len(tools)} tools (64 KiB of schemas)", chat,
         {"messages": [{"role": "user", "content": "hi"}], "tools": tools, "max_tokens": 8}),
        ("1024 messages of 300 words (over the context)", chat,
         {"messages": [{"role": "user", "content": text(300)}] * 1024, "max_tokens": 8}),
        ("one 4 MiB prompt (over the context)", completion, {"prompt": "ab " * ((4 << 20) // 3 - 40), "max_tokens": 8}),
        ("800,000 prompts in 4 MiB (over max_prompts)", completion, {"prompt": ["a"] * ((4 << 20) // 5 - 10), "max_tokens": 8}),
        ("200,000 prompts x n=8 (the issue's body)", completion, {"prompt": ["abc"] * 200_000, "n": 8, "max_tokens": 16}),
    ]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def measure(url, pid, path, body):
    data = json.dumps(body).encode()
    peak, done = [rss_mib(pid)], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(0.002)

    before = peak[0]
    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data, {"Content-Type": "application/json"})) as r:
            r.read()
            status, detail = r.status, ""
    except urllib.error.HTTPError as e:
        error = json.load(e)["error"]
        status, detail = e.code, error.get("param") or error.get("code") or ""
    took = time.monotonic() - start
    done.set()
    sampler.join()
    time.sleep(3)  # the worker gives pooled step memory back after 2 s idle
    return len(data), status, detail, took, before, peak[0], rss_mib(pid)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", default="target/debug/cinder")
    p.add_argument("--model")
    args = p.parse_args()
    cmd = [args.binary, "serve", "--port", "0"] + (["--model", args.model] if args.model else [])
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:
            if "listening on " in line:
                url = line.split("listening on ", 1)[1].strip()
                break
        threading.Thread(target=lambda: server.stderr.read(), daemon=True).start()
        warm = {"prompt": text(20), "max_tokens": 4}
        measure(url, server.pid, "/v1/completions", warm)
        print(f"{'body':52} {'bytes':>9} {'answer':>16} {'time s':>7}  RSS MiB before / peak / after")
        for name, path, body in bodies():
            size, status, detail, took, before, peak, after = measure(url, server.pid, path, body)
            answer = f"{status} {detail}".strip()
            print(f"{name:52} {size:9} {answer:>16} {took:7.2f}  {before:.0f} / {peak:.0f} / {after:.0f}", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
