#!/usr/bin/env python3
"""`llm-quantize serve` under concurrent clients (standard library only).

    python3 scripts/serve-check.py LLM_QUANTIZE MODEL [--device cuda] [--clients 16]
        [--max-tokens 48] [--max-batch 16]

Starts the server on a free port, then:
  1. one greedy request per prompt, alone (the reference text);
  2. CLIENTS threads at once, each sending every prompt (greedy, half of them streamed);
Checks that every request succeeded and that each concurrent answer equals the one the
same prompt got alone (the server's batch invariance), and prints one JSON line: the
request and error counts, mismatches, generated tokens and their aggregate rate, and
the latency percentiles. Exit status 1 when any request failed or any answer differed.
"""
import argparse
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

PROMPTS = [
    "The history of the city begins",
    "In the morning the river",
    "Once upon a time there was a",
    "The main export of the region is",
]


def post(base, body, stream):
    req = urllib.request.Request(
        base + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        if not stream:
            d = json.loads(r.read())
            return d["choices"][0]["text"], d["usage"]["completion_tokens"]
        text, n = "", 0
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            for c in d.get("choices", []):
                if c.get("text"):
                    text += c["text"]
                    n += 1
        return text, None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("lq")
    p.add_argument("model")
    p.add_argument("--device", default="auto")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--max-batch", type=int, default=16)
    a = p.parse_args()

    srv = subprocess.Popen(
        [a.lq, "serve", a.model, "--port", "0", "--device", a.device,
         "--max-batch", str(a.max_batch), "--max-queue", str(4 * a.clients * len(PROMPTS))],
        stderr=subprocess.PIPE, text=True,
    )
    base = None
    log = []
    for line in srv.stderr:
        log.append(line)
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            base = m.group(1)
            break
    if base is None:
        print("".join(log), file=sys.stderr)
        sys.exit("the server did not start")
    threading.Thread(target=lambda: [log.append(l) for l in srv.stderr], daemon=True).start()

    def body(prompt, stream):
        return {"prompt": prompt, "max_tokens": a.max_tokens, "temperature": 0,
                "stream": stream}

    try:
        alone = {pr: post(base, body(pr, False), False)[0] for pr in PROMPTS}
        results, errors, lat = [], [], []
        lock = threading.Lock()

        def client(i):
            for k, pr in enumerate(PROMPTS):
                stream = (i + k) % 2 == 1
                t = time.time()
                try:
                    text, n = post(base, body(pr, stream), stream)
                    with lock:
                        results.append((pr, text, n))
                        lat.append(time.time() - t)
                except Exception as e:  # noqa: BLE001 (every failure is counted)
                    with lock:
                        errors.append(f"client {i} prompt {k}: {e}")

        t0 = time.time()
        th = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        wall = time.time() - t0
    finally:
        srv.terminate()
        srv.wait(timeout=60)

    mismatch = [pr for pr, text, _ in results if text != alone[pr]]
    tokens = sum(n if n is not None else a.max_tokens for _, _, n in results)
    lat.sort()
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None
    out = {
        "device": a.device, "clients": a.clients, "requests": a.clients * len(PROMPTS),
        "ok": len(results), "errors": len(errors), "mismatches": len(mismatch),
        "generated_tokens": tokens, "wall_seconds": round(wall, 2),
        "tokens_per_second": round(tokens / wall, 1),
        "latency_p50_s": pct(0.5), "latency_p95_s": pct(0.95),
    }
    print(json.dumps(out))
    for e in errors[:5]:
        print(e, file=sys.stderr)
    if errors or mismatch:
        print("".join(log[-20:]), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
