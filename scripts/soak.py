#!/usr/bin/env python3
"""Soak test for `cinder serve`: overload it with a mix of clients and look for leaks.

Measures capacity with a closed-loop calibration, then offers `--load` x capacity as Poisson
arrivals of streaming chats, plain completions, clients that hang up mid-request and fan-out
requests. Meanwhile samples RSS, open descriptors and /metrics. At the end checks that nothing
failed, the engine drained to idle, memory and descriptors stayed flat after warm-up and the
server shut down cleanly on SIGTERM. Standard library only; speaks HTTP/1.1 itself.

With `--abuse`, the honest clients (a tenant of their own: short streaming chats, evenly
spaced, about half the capacity) run alone and beside an abusive tenant (a process of its
own) in turns of `--segment-s`; the abuser, capped at low priority, sends fan-outs of
200,000 prompts, hundreds of long stop strings, grammar bombs and short deadlines. Checks that
the honest clients' p99 time to first token stays within 1.5x of their run alone, RSS stays
bounded and nothing fails (refusals of the abuser are expected; errors are not).

    XDG_RUNTIME_DIR=/tmp python3 scripts/soak.py --quick --server-arg=--max-running --server-arg=8
    XDG_RUNTIME_DIR=/tmp python3 scripts/soak.py --abuse --duration-s 180 --calibrate-s 20
"""
import argparse
import asyncio
import collections
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

WORDS = ("the a river stone light city night quiet old new machine garden story about why how "
         "write describe explain small bright cold warm little dog cat robot ship storm tree").split()
KIND_WEIGHTS = {"stream_chat": 40, "completion": 30, "disconnect": 15, "fan_out": 15}


# --- a minimal HTTP/1.1 client (Connection: close on every request) ---------------------------

class HttpError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: dict
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def body_chunks(self):
        """Yields the body as it arrives: chunked, Content-Length, or until the peer closes."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    raise HttpError("connection closed inside a chunked body")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield (await self.reader.readexactly(size + 2))[:-2]
        elif "content-length" in self.headers:
            remaining = int(self.headers["content-length"])
            while remaining > 0:
                data = await self.reader.read(min(remaining, 65536))
                if not data:
                    raise HttpError(f"connection closed with {remaining} body bytes missing")
                remaining -= len(data)
                yield data
        else:
            while data := await self.reader.read(65536):
                yield data

    async def read_body(self) -> bytes:
        return b"".join([chunk async for chunk in self.body_chunks()])

    def close(self, abort=False):
        # abort() drops the connection without a graceful FIN exchange: an impatient client.
        self.writer.transport.abort() if abort else self.writer.close()


# The bearer keys of the honest clients and of /metrics, when the server has tenants (--abuse).
KEYS = {"client": None, "admin": None}


async def send(addr, method, path, body=None, key=None) -> Response:
    """`body`: a JSON value, or bytes already encoded. `key`: the bearer key [default: the
    honest clients']."""
    host, port = addr
    reader, writer = await asyncio.open_connection(host, port)
    payload = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    key = key or KEYS["client"]
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    try:
        writer.write(head.encode() + payload)
        await writer.drain()
        parts = (await reader.readline()).split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise HttpError(f"bad status line {b' '.join(parts)!r}")
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return Response(int(parts[1]), headers, reader, writer)
    except BaseException:
        writer.transport.abort()
        raise


async def fetch(addr, method, path, body=None, timeout=10.0, key=None):
    async def go():
        resp = await send(addr, method, path, body, key)
        try:
            return resp.status, await resp.read_body()
        finally:
            resp.close()
    return await asyncio.wait_for(go(), timeout)


async def sse_data(resp):
    """Yields the `data:` payload of each server-sent event."""
    buffer = b""
    async for chunk in resp.body_chunks():
        buffer = (buffer + chunk).replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
            if data:
                yield b"\n".join(data).decode()


def parse_metrics(text):
    """Prometheus text: the first value of each metric name, labels ignored."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values.setdefault(name.split("{")[0].strip(), float(value))
            except ValueError:
                pass
    return values


# --- clients --------------------------------------------------------------------------------

@dataclass
class Result:
    kind: str
    start: float
    status: int | None = None
    code: str | None = None  # the error code of a refusal, e.g. queue_full
    latency: float | None = None
    ttft: float | None = None
    aborted: bool = False  # the client hung up on purpose
    error: str | None = None
    abusive: bool = False  # the abuser's: any refusal is the right answer

    @property
    def refused(self):
        """Turned away under load: a 429, or a deadline to start that passed while it waited
        (or the abuser, by any 4xx)."""
        if self.abusive and self.status in (400, 408, 413, 429):
            return True
        return self.status == 429 or self.code in ("deadline_exceeded", "deadline")

    @property
    def failed(self):
        return self.error is not None or (not self.aborted and self.status != 200 and not self.refused)

    @property
    def outcome(self):
        if self.error is not None:
            return "error"
        if self.aborted:  # hung up before the first token, or mid-stream
            return "aborted/streaming" if self.ttft is not None else "aborted/waiting"
        return f"{self.status}/{self.code}" if self.code else str(self.status)


def prompt():
    return " ".join(random.choices(WORDS, k=random.randint(3, 12)))


# Fields every soak request carries (`deadline_ms` with --deadline-ms), and the range of
# their `max_tokens`.
COMMON_FIELDS = {}
MAX_TOKENS = [8, 64]


def chat_body(**extra):
    return {"messages": [{"role": "user", "content": prompt()}], "max_tokens": random.randint(*MAX_TOKENS), **COMMON_FIELDS, **extra}


def completion_body(**extra):
    return {"prompt": prompt(), "max_tokens": random.randint(*MAX_TOKENS), **COMMON_FIELDS, **extra}


async def note_refusal(r, resp):
    """A non-200 answer: a 429 or a passed deadline is fair under overload, anything else
    is a failure."""
    body = await resp.read_body()
    try:
        r.code = json.loads(body)["error"].get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    if not r.refused:
        r.error = f"HTTP {resp.status}: {body[:200].decode(errors='replace')}"


async def non_streaming(addr, r, path, body, choices):
    resp = await send(addr, "POST", path, body)
    try:
        r.status = resp.status
        if resp.status != 200:
            return await note_refusal(r, resp)
        reply = json.loads(await resp.read_body())
        r.latency = time.monotonic() - r.start
        if len(reply.get("choices", [])) != choices:
            r.error = f"{path}: {len(reply.get('choices', []))} choices, expected {choices}"
    finally:
        resp.close()


async def streaming(addr, r, path, body, stop_after=None):
    """Reads SSE to `[DONE]`, or hangs up after `stop_after` events."""
    finished = False
    resp = await send(addr, "POST", path, body)
    try:
        r.status = resp.status
        if resp.status != 200:
            finished = True
            return await note_refusal(r, resp)
        events = 0
        async for data in sse_data(resp):
            if data == "[DONE]":
                finished = True
                r.latency = time.monotonic() - r.start
                return
            if r.ttft is None:
                r.ttft = time.monotonic() - r.start
            if '"error"' in data and "error" in json.loads(data):
                r.error = f"{path}: error event {data[:200]}"
                return
            if '"finish_reason":"deadline"' in data:
                r.code = "deadline"
            events += 1
            if stop_after is not None and events >= stop_after:
                r.aborted = True
                return
        r.error = f"{path}: stream ended without [DONE] after {events} events"
    finally:
        resp.close(abort=not finished)


async def stream_chat(addr, r):
    await streaming(addr, r, "/v1/chat/completions", chat_body(stream=True))


async def completion(addr, r):
    await non_streaming(addr, r, "/v1/completions", completion_body(), 1)


async def disconnect(addr, r):
    path, body = random.choice([("/v1/chat/completions", chat_body(stream=True)),
                                ("/v1/completions", completion_body(stream=True))])
    if random.random() < 0.5:
        await streaming(addr, r, path, body, stop_after=random.randint(1, 4))
    else:
        # Hang up after a random wait, wherever the request is: queued, prefilling or decoding.
        try:
            await asyncio.wait_for(streaming(addr, r, path, body), random.uniform(0.05, 1.0))
        except TimeoutError:
            r.aborted = True


async def fan_out(addr, r):
    if random.random() < 0.5:
        await non_streaming(addr, r, "/v1/chat/completions", chat_body(n=4), 4)
    else:
        body = completion_body(prompt=[prompt() for _ in range(3)])
        await non_streaming(addr, r, "/v1/completions", body, 3)


CLIENTS = {"stream_chat": stream_chat, "completion": completion, "disconnect": disconnect, "fan_out": fan_out}


# --- the abuser (--abuse): a tenant capped at low priority, trying to hurt the others -------

ABUSER_KEY = "sk-soak-abuser"
TENANTS = f"""
[[tenants]]
name = "honest"
api_keys = ["sk-soak-honest"]

[[tenants]]
name = "abuser"
api_keys = ["{ABUSER_KEY}"]
max_priority = "low"
max_concurrent = 1
requests_per_second = 1.0
"""
ABUSE_WEIGHTS = {"huge_fan_out": 25, "huge_stop": 25, "grammar_bomb": 25, "short_deadline": 25}
# The honest clients beside it: short streaming chats, evenly spaced, whose time to first
# token is compared.
HONEST_WEIGHTS = {"stream_chat": 1}
# 200,000 prompts times n = 8 (1.2 MB), encoded once.
HUGE_FAN_OUT = json.dumps({"prompt": ["abc"] * 200_000, "n": 8, "max_tokens": 16}).encode()


async def abusive(addr, r, path, body):
    """An abuser's request: any refusal (400, 408, 413, 429) or an answer is fair; an error is
    not."""
    r.abusive = True
    resp = await send(addr, "POST", path, body, ABUSER_KEY)
    try:
        r.status = resp.status
        reply = await resp.read_body()
        if resp.status in (400, 408, 413, 429):
            try:
                r.code = json.loads(reply)["error"].get("code") or json.loads(reply)["error"].get("param")
            except (ValueError, KeyError, TypeError, AttributeError):
                pass
        elif resp.status != 200:
            r.error = f"HTTP {resp.status}: {reply[:200].decode(errors='replace')}"
        else:
            r.latency = time.monotonic() - r.start
    finally:
        resp.close()


def grammar_bomb():
    """A schema under the size limit whose grammar is costly: many properties of long patterns."""
    properties = {f"p{i}": {"type": "string", "pattern": f"[a-z]{{{i % 50},{i % 50 + 60}}}(x|y)[0-9]{{2,40}}"} for i in range(300)}
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"messages": [{"role": "user", "content": "fill it in"}], "max_tokens": 16,
            "response_format": {"type": "json_schema", "json_schema": {"name": "bomb", "schema": schema}}}


# 256 stop strings of 4 KiB (1 MB), and a grammar bomb, encoded once too: the abuser's own
# work should not take the machine's CPU.
HUGE_STOP = json.dumps({"prompt": "the river", "stop": ["x" * 4096] * 256, "max_tokens": 16}).encode()
GRAMMAR_BOMB = json.dumps(grammar_bomb()).encode()

ABUSERS = {
    "huge_fan_out": lambda addr, r: abusive(addr, r, "/v1/completions", HUGE_FAN_OUT),
    "huge_stop": lambda addr, r: abusive(addr, r, "/v1/completions", HUGE_STOP),
    "grammar_bomb": lambda addr, r: abusive(addr, r, "/v1/chat/completions", GRAMMAR_BOMB),
    "short_deadline": lambda addr, r: abusive(
        addr, r, "/v1/chat/completions", chat_body(priority="critical", deadline_ms=random.randint(1, 500))),
}


class Run:
    def __init__(self, addr, timeout):
        self.addr, self.timeout = addr, timeout
        self.results: list[Result] = []

    async def request(self, kind, client):
        r = Result(kind, time.monotonic())
        try:
            await asyncio.wait_for(client(self.addr, r), self.timeout)
        except TimeoutError:
            r.error = f"client timeout after {self.timeout:.0f} s"
        except Exception as e:  # connection resets, truncated bodies, bad JSON
            r.error = f"{type(e).__name__}: {e}"
        self.results.append(r)
        return r


async def calibrate(run, seconds, concurrency):
    """Closed loop: completed requests per second at a fixed concurrency."""
    body = lambda: {"prompt": prompt(), "max_tokens": 32, "ignore_eos": True}
    client = lambda addr, r: non_streaming(addr, r, "/v1/completions", body(), 1)
    start = time.monotonic()
    deadline, in_window, total = start + seconds, 0, 0

    async def worker():
        nonlocal in_window, total
        while time.monotonic() < deadline:
            r = await run.request("calibrate", client)
            if not r.failed and r.status == 200:
                total += 1
                in_window += time.monotonic() <= deadline
            elif r.failed:
                await asyncio.sleep(0.5)  # don't spin on a broken server
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    # Requests still running at the deadline are not counted; if none made it, count the tail.
    return in_window / seconds if in_window else total / (time.monotonic() - start)


async def soak(run, seconds, rate, weights, clients=CLIENTS, poisson=True):
    """Requests of `weights`' kinds at `rate` per second for `seconds`: Poisson arrivals, or
    evenly spaced ones."""
    kinds, w = list(weights), list(weights.values())
    tasks, start = set(), time.monotonic()
    next_arrival = start
    while True:
        # An absolute schedule: no drift from slow spawns.
        next_arrival += random.expovariate(rate) if poisson else 1 / rate
        if next_arrival - start >= seconds:
            break
        await asyncio.sleep(max(0.0, next_arrival - time.monotonic()))
        kind = random.choices(kinds, w)[0]
        task = asyncio.create_task(run.request(kind, clients[kind]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
    if tasks:
        print(f"waiting for {len(tasks)} requests in flight", flush=True)
        await asyncio.gather(*tasks)


# --- the server and its vital signs ---------------------------------------------------------

class Server:
    """`cinder serve` on a free port; its output is drained (kept: the last lines)."""

    def __init__(self):
        self.proc, self.tail = None, collections.deque(maxlen=40)

    async def start(self, args):
        cmd = [args.binary, "serve", "--port", "0"] + (["--model", args.model] if args.model else [])
        if args.abuse:
            config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            config.write(TENANTS)
            config.close()
            KEYS.update(client="sk-soak-honest", admin="sk-soak-admin")
            cmd += ["--config", config.name, "--api-key", KEYS["admin"]]
        cmd += args.server_arg
        print("starting:", " ".join(cmd), flush=True)
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        listening = asyncio.get_running_loop().create_future()
        self.drainer = asyncio.create_task(self._drain(listening))
        url = await asyncio.wait_for(listening, args.startup_timeout_s)
        if url is None:
            raise SystemExit(f"the server exited ({await self.proc.wait()}):\n" + "\n".join(self.tail))
        return url

    async def _drain(self, listening):
        while line := await self.proc.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            self.tail.append(text)
            if "listening on http://" in text and not listening.done():
                listening.set_result(text.split("listening on ", 1)[1].strip())
        if not listening.done():
            listening.set_result(None)

    async def stop(self, timeout=60.0):
        """SIGTERM, then (exit code, seconds); exit code None if it had to be killed."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            code = None
        return code, time.monotonic() - start


async def wait_healthy(addr, timeout, server):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server and server.proc.returncode is not None:
            raise SystemExit("the server exited during start-up:\n" + "\n".join(server.tail))
        try:
            if (await fetch(addr, "GET", "/health", timeout=5))[0] == 200:
                return
        except (OSError, HttpError, TimeoutError, asyncio.IncompleteReadError):
            pass
        await asyncio.sleep(0.5)
    raise SystemExit(f"/health did not answer 200 within {timeout} s")


async def read_metrics(addr):
    try:
        status, body = await fetch(addr, "GET", "/metrics", timeout=10, key=KEYS["admin"])
        return parse_metrics(body.decode()) if status == 200 else None
    except (OSError, HttpError, TimeoutError, asyncio.IncompleteReadError):
        return None


def engine_state(metrics):
    names = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")
    return {n: (metrics or {}).get(f"cinder:{n}") for n in names}


async def sample(addr, pid, t):
    s = {"t": round(t, 1), "rss_kib": None, "fds": None}
    if pid:
        try:
            with open(f"/proc/{pid}/status") as f:
                s["rss_kib"] = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            s["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            pass
    return s | engine_state(await read_metrics(addr))


async def sampler(addr, pid, start, samples, stop, every=5.0):
    while not stop.is_set():
        samples.append(await sample(addr, pid, time.monotonic() - start))
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass


async def wait_idle(addr, timeout=30.0):
    """Polls /metrics until nothing runs or waits and the KV cache is empty."""
    deadline = time.monotonic() + timeout
    while True:
        state = engine_state(await read_metrics(addr))
        if all(v == 0 for v in state.values()) or time.monotonic() >= deadline:
            return state
        await asyncio.sleep(0.5)


# --- report ---------------------------------------------------------------------------------

def percentiles(values):
    if not values:
        return None
    v = sorted(values)
    return {f"p{p}": round(v[min(len(v) - 1, int(p / 100 * len(v)))], 3) for p in (50, 95, 99)}


def summarize(results, samples, duration, t0):
    counts = collections.defaultdict(collections.Counter)
    latency = {}
    for r in results:
        counts[r.kind][r.outcome] += 1
    for kind in counts:
        ok = [r for r in results if r.kind == kind and r.status == 200 and not r.refused and not r.aborted and r.error is None]
        latency[kind] = {"total": percentiles([r.latency for r in ok]),
                         "ttft": percentiles([r.ttft for r in ok if r.ttft is not None])}
    failures = [r for r in results if r.failed]
    measured = [s for s in samples if s["rss_kib"] is not None]
    warm_up = None
    if measured:
        mark = min(measured, key=lambda s: abs(s["t"] - 0.25 * duration))
        warm_up = {"t_25": mark["t"], "rss_kib_25": mark["rss_kib"], "fds_25": mark["fds"],
                   "rss_kib_end": measured[-1]["rss_kib"], "fds_end": measured[-1]["fds"],
                   "rss_kib_max": max(s["rss_kib"] for s in measured), "fds_max": max(s["fds"] for s in measured)}
    return {"counts": {k: dict(v) for k, v in counts.items()}, "latency_s": latency,
            "failures": {"count": len(failures),
                         "examples": [f"{r.kind} at +{r.start - t0:.1f} s: {r.error or r.outcome}" for r in failures[:20]]},
            "warm_up": warm_up}


def checks(report, started, p99_limit_s):
    final, w, shut = report["final"], report["warm_up"], report["shutdown"]
    p99s = [lat["total"]["p99"] for lat in report["latency_s"].values() if lat["total"]]
    result = {"no failures": report["failures"]["count"] == 0,
              f"p99 latency of admitted requests <= {p99_limit_s:g} s": bool(p99s) and max(p99s) <= p99_limit_s,
              "engine idle at the end": all(final[k] == 0 for k in final)}
    if w:
        result["RSS flat after warm-up"] = w["rss_kib_end"] <= 1.25 * w["rss_kib_25"] + 64 * 1024
        result["fds flat after warm-up"] = w["fds_end"] <= w["fds_25"] + 16
    else:
        result["RSS/fds flat after warm-up"] = None  # no pid to sample
    result["clean shutdown"] = (shut["exit_code"] == 0 and shut["seconds"] <= 60) if started else None
    return result


async def run_abuser(url, seconds, args):
    """Runs this script as the abuser (`--abuser URL`) for `seconds`; returns its results."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        mix = ",".join(f"{k}={w}" for k, w in args.abuse_mix.items())
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--abuser", url, "--duration-s", str(seconds), "--abuse-rate", str(args.abuse_rate),
            "--abuse-mix", mix, "--request-timeout-s", str(args.request_timeout_s), "--json", out.name)
        if await child.wait() != 0:
            raise SystemExit("the abuser process failed")
        return [Result(**r) for r in json.load(open(out.name))]


async def abuse(args):
    """The abuser process: its requests for `--duration-s`, their results to `--json`."""
    host, _, port = args.abuser.removeprefix("http://").rstrip("/").rpartition(":")
    run = Run((host, int(port)), args.request_timeout_s)
    await soak(run, args.duration_s, args.abuse_rate, args.abuse_mix, ABUSERS)
    with open(args.json, "w") as f:
        json.dump([asdict(r) for r in run.results], f)
    return 0


def honest_ttft(results):
    return [r.ttft for r in results
            if r.kind == "stream_chat" and r.status == 200 and not r.aborted and r.error is None and r.ttft is not None]


def abuse_report(alone, beside, abuser, samples, length):
    """The honest clients' time to first token alone and beside the abuser, the abuser's
    outcomes, RSS in each kind of segment (alone: even ones)."""
    ttft = {"alone": percentiles(honest_ttft(alone)), "beside_abuser": percentiles(honest_ttft(beside)),
            "samples": {"alone": len(honest_ttft(alone)), "beside_abuser": len(honest_ttft(beside))}}
    rss = {phase: max((s["rss_kib"] for s in samples if s["rss_kib"] is not None and int(s["t"] // length) % 2 == odd), default=None)
           for phase, odd in (("alone", 0), ("beside_abuser", 1))}
    outcomes = collections.defaultdict(collections.Counter)
    for r in abuser:
        outcomes[r.kind][r.outcome] += 1
    ratio = ttft["beside_abuser"]["p99"] / ttft["alone"]["p99"] if ttft["alone"] and ttft["beside_abuser"] else None
    checks = {"honest p99 TTFT beside the abuser <= 1.5x alone": ratio is not None and ratio <= 1.5,
              "RSS bounded (max beside the abuser <= max alone + 128 MiB)":
                  None if None in rss.values() else rss["beside_abuser"] <= rss["alone"] + 128 * 1024}
    return {"honest_ttft_s": ttft, "ttft_p99_ratio": None if ratio is None else round(ratio, 3), "max_rss_kib": rss,
            "abuser": {k: dict(v) for k, v in outcomes.items()}, "checks": checks}


def print_report(report):
    print(f"\ncapacity {report['capacity_rps']:.2f} req/s; offered {report['offered_rps']:.2f} req/s "
          f"for {report['duration_s']:.0f} s")
    for kind, counts in report["counts"].items():
        lat = report["latency_s"][kind]
        print(f"  {kind:12} {sum(counts.values()):5}  {dict(sorted(counts.items()))}")
        print(f"  {'':12}        total {lat['total']}" + (f"  ttft {lat['ttft']}" if lat["ttft"] else ""))
    print(f"failures: {report['failures']['count']}")
    for example in report["failures"]["examples"]:
        print("  ", example)
    if w := report["warm_up"]:
        print(f"RSS MiB: at {w['t_25']:.0f} s {w['rss_kib_25'] / 1024:.0f}, end {w['rss_kib_end'] / 1024:.0f}, "
              f"max {w['rss_kib_max'] / 1024:.0f}; fds: {w['fds_25']}, end {w['fds_end']}, max {w['fds_max']}")
    if a := report.get("abuse"):
        print(f"honest TTFT alone {a['honest_ttft_s']['alone']}, beside the abuser {a['honest_ttft_s']['beside_abuser']}: "
              f"p99 ratio {a['ttft_p99_ratio']}")
        mib = {phase: kib and round(kib / 1024) for phase, kib in a["max_rss_kib"].items()}
        print(f"max RSS MiB alone {mib['alone']}, beside the abuser {mib['beside_abuser']}")
        for kind, counts in a["abuser"].items():
            print(f"  abuser {kind:14} {dict(sorted(counts.items()))}")
    print(f"final engine state: {report['final']}")
    print(f"shutdown: exit code {report['shutdown']['exit_code']} after {report['shutdown']['seconds']} s")
    for name, ok in report["checks"].items():
        print(f"{'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}  {name}")


async def main(args):
    if args.abuser:
        return await abuse(args)
    server = Server() if not args.url else None
    try:
        return await soak_server(args, server)
    finally:
        if server and server.proc and server.proc.returncode is None:
            server.proc.kill()  # we are leaving early: don't orphan it


async def soak_server(args, server):
    url = args.url or await server.start(args)
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    addr, pid = (host, int(port)), (server.proc.pid if server else args.pid)
    await wait_healthy(addr, args.startup_timeout_s, server)
    print(f"server up at {url}", flush=True)

    run = Run(addr, args.request_timeout_s)
    print(f"calibrating: {args.calibrate_s:.0f} s at concurrency {args.calibrate_concurrency}", flush=True)
    capacity = await calibrate(run, args.calibrate_s, args.calibrate_concurrency)
    rate = max(args.load * capacity, 0.05)
    print(f"capacity {capacity:.2f} req/s; soaking {args.duration_s:.0f} s at {rate:.2f} req/s", flush=True)

    samples, stop, start = [], asyncio.Event(), time.monotonic()
    sampling = asyncio.create_task(sampler(addr, pid, start, samples, stop))
    if args.abuse:
        await wait_idle(addr)
        # Alone and beside the abuser in turns, so that the machine's own drift falls on both.
        segments = max(2, round(args.duration_s / args.segment_s) // 2 * 2)
        length = args.duration_s / segments
        print(f"honest clients at {rate:.2f} req/s, alone and beside the abuser ({args.abuse_rate:g} req/s) "
              f"in turns of {length:.0f} s", flush=True)
        alone, beside, abuser_results = Run(addr, args.request_timeout_s), Run(addr, args.request_timeout_s), []
        for segment in range(segments):
            if segment % 2 == 0:
                await soak(alone, length, rate, HONEST_WEIGHTS, poisson=False)
                continue
            # The abuser is a process of its own, as a remote client is: its I/O does not
            # delay the honest clients' event loop, which times their first tokens.
            _, results = await asyncio.gather(soak(beside, length, rate, HONEST_WEIGHTS, poisson=False),
                                              run_abuser(url, length, args))
            abuser_results += results
        run.results = alone.results + beside.results + abuser_results
    else:
        await soak(run, args.duration_s, rate, KIND_WEIGHTS)
    final = await wait_idle(addr)
    stop.set()
    await sampling
    samples.append(await sample(addr, pid, time.monotonic() - start))
    code, seconds = await server.stop() if server else (None, None)

    report = {"capacity_rps": round(capacity, 3), "offered_rps": round(rate, 3), "duration_s": args.duration_s,
              **summarize(run.results, samples, args.duration_s, start), "final": final,
              "shutdown": {"exit_code": code, "seconds": None if seconds is None else round(seconds, 2)},
              "samples": samples, "server_output_tail": list(server.tail) if server else []}
    report["checks"] = checks(report, server is not None, args.p99_limit_s)
    if args.abuse:
        report["abuse"] = abuse_report(alone.results, beside.results, abuser_results, samples, length)
        report["checks"].update(report["abuse"].pop("checks"))
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print_report(report)
    print(f"wrote {args.json}")
    return 0 if all(ok is not False for ok in report["checks"].values()) else 1


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", default="target/debug/cinder")
    p.add_argument("--model", help="GGUF file [default: the binary's default]")
    p.add_argument("--server-arg", action="append", default=[], help="extra `cinder serve` argument (repeatable)")
    p.add_argument("--url", help="use a running server at http://HOST:PORT instead of starting one")
    p.add_argument("--pid", type=int, help="with --url: the server's pid, for RSS and descriptor samples")
    p.add_argument("--calibrate-s", type=float, default=30)
    p.add_argument("--calibrate-concurrency", type=int, default=8)
    p.add_argument("--duration-s", type=float, default=600)
    p.add_argument("--load", type=float, help="offered load as a multiple of capacity [default: 2; 1 with --abuse, whose requests are shorter]")
    p.add_argument("--request-timeout-s", type=float, default=120)
    p.add_argument("--deadline-ms", type=int, help="every soak request's `deadline_ms` (how long it may wait to start)")
    p.add_argument("--p99-limit-s", type=float, default=60, help="bound on the p99 latency of admitted requests")
    p.add_argument("--startup-timeout-s", type=float, default=300)
    p.add_argument("--seed", type=int, help="random seed, for a repeatable mix")
    p.add_argument("--json", default="soak.json")
    p.add_argument("--quick", action="store_true", help="calibrate 10 s, soak 60 s")
    p.add_argument("--abuse", action="store_true", help="honest clients alone, then beside an abusive tenant")
    p.add_argument("--abuse-rate", type=float, default=2.0, help="the abuser's requests per second")
    p.add_argument("--segment-s", type=float, default=20, help="with --abuse: the length of each turn alone or beside the abuser")
    p.add_argument("--abuser", metavar="URL", help=argparse.SUPPRESS)  # the abuser's own process
    p.add_argument("--abuse-mix", default=",".join(f"{k}={w}" for k, w in ABUSE_WEIGHTS.items()),
                   help=f"the abuser's requests, KIND=WEIGHT,... of {', '.join(ABUSE_WEIGHTS)}")
    args = p.parse_args()
    if args.quick:
        args.calibrate_s, args.duration_s = 10, 60
    if args.load is None:
        # With --abuse, short honest requests at the calibrated rate: about half the capacity.
        args.load = 1.0 if args.abuse else 2.0
    if args.abuse or args.abuser:
        MAX_TOKENS[:] = [8, 16]
    mix = {}
    for pair in args.abuse_mix.split(","):
        kind, _, weight = pair.partition("=")
        if kind not in ABUSERS:
            p.error(f"--abuse-mix: no abuse called {kind!r} ({', '.join(ABUSERS)})")
        mix[kind] = float(weight or 1)
    args.abuse_mix = mix
    random.seed(args.seed)
    if args.deadline_ms:
        COMMON_FIELDS["deadline_ms"] = args.deadline_ms
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
