#!/usr/bin/env python3
"""Greedy decode rate of one request through a running `dwarfstar serve`, for the speculation
benchmarks (deploy/bench-spec.sh, deploy/bench-spec-mesh.sh).

    decode-rate.py BASE_URL N    prints "TOKENS_PER_S ACCEPTANCE_RATE"

Decode time is that of a 16+N-token generation less a 16-token one on the same prompt (the
prefill cancels), best of three after a warm-up; the acceptance rate is the server's
speculation counter from /v1/status.
"""
import json
import sys
import time
import urllib.request

base, n = sys.argv[1], int(sys.argv[2])


def timed(m):
    body = json.dumps({"prompt": "Write a short story about a lighthouse keeper and a storm.",
                       "max_tokens": m, "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(base + "/v1/completions", body,
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        v = json.load(r)
    assert v["usage"]["completion_tokens"] == m, v["usage"]
    return time.perf_counter() - t0


timed(8)
rate = max(n / (timed(16 + n) - timed(16)) for _ in range(3))
st = json.load(urllib.request.urlopen(base + "/v1/status"))
print(f"{rate:.2f} {st['speculation']['acceptance_rate']:.3f}")
