"""Steady load through the OpenAI client: WORKERS threads each send completions one after
another to BASE_URL until the file STOP exists, then print one JSON line: requests, failed,
and each failure's error. Usage: steady_load.py BASE_URL MODEL WORKERS STOP"""
import json
import os
import sys
import threading
import time

from openai import OpenAI

base_url, model, workers, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
client = OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=60)
lock = threading.Lock()
counts = {"requests": 0, "failed": 0, "errors": [], "failed_at": []}
started = time.monotonic()


def work(i):
    n = 0
    while not os.path.exists(stop):
        n += 1
        try:
            answer = client.completions.create(model=model, prompt=f"worker {i} request {n}", max_tokens=24,
                                               temperature=0, extra_body={"ignore_eos": True})
            ok = answer.usage.completion_tokens == 24
            error = None if ok else f"only {answer.usage.completion_tokens} tokens"
        except Exception as e:  # a dropped connection, a 502 from the balancer, ...
            ok, error = False, f"{type(e).__name__}: {e}"
        with lock:
            counts["requests"] += 1
            if not ok:
                counts["failed"] += 1
                counts["errors"].append(error)
                counts["failed_at"].append(round(time.monotonic() - started, 2))


threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(counts))
