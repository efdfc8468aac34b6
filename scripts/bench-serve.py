#!/usr/bin/env python3
"""Aggregate decode throughput and time to first token of an OpenAI-compatible server
(`llm-quantize serve` or llama.cpp's `llama-server`) at several client counts.

Usage: python3 scripts/bench-serve.py URL [--clients 1,4,16] [--max-tokens 64] [--requests-per-client 2]

Each client sends streamed /v1/completions requests one after another (greedy,
`ignore_eos` so every request makes exactly --max-tokens tokens) and the script
prints, per concurrency level, generated tokens / wall seconds over all clients and
the median / max time from sending a request to its first streamed token. Standard
library only.
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def one_request(host, port, prompt, max_tokens):
    body = json.dumps({
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "ignore_eos": True, "stream_options": {"include_usage": True},
    })
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(host, port, timeout=600)
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    ttft, pieces, usage = None, 0, None
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        v = json.loads(data)
        if v.get("usage"):
            usage = v["usage"]
        for ch in v.get("choices", []):
            if ch.get("text"):
                pieces += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
    c.close()
    n = usage["completion_tokens"] if usage else pieces
    return n, ttft if ttft is not None else time.perf_counter() - t0


def level(host, port, clients, max_tokens, per_client):
    results, errors = [], []
    lock = threading.Lock()

    def client(i):
        for k in range(per_client):
            try:
                res = one_request(host, port, f"def function_{i}_{k}(x):\n    # compute", max_tokens)
                with lock:
                    results.append(res)
            except Exception as e:  # reported, not hidden
                with lock:
                    errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(n for n, _ in results)
    ttfts = sorted(t for _, t in results)
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(errors),
        "tokens": tokens,
        "seconds": round(wall, 2),
        "tokens_per_second": round(tokens / wall, 1),
        "ttft_median_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "ttft_max_s": round(ttfts[-1], 3) if ttfts else None,
        "first_error": errors[0] if errors else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-client", type=int, default=2)
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    one_request(u.hostname, u.port, "warm up", 4)
    for n in [int(x) for x in a.clients.split(",")]:
        print(json.dumps(level(u.hostname, u.port, n, a.max_tokens, a.requests_per_client)), flush=True)


if __name__ == "__main__":
    main()
