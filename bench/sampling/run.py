"""What the trace sampling decision adds to a gateway call, in one process.

Times `telemetry.sampling.decide` over a realistic mix (mostly fast cheap successes that reach
the base-rate hash, some errors, slow and costly calls), the cached `policy_for` lookup the
gateway does before it and the Prometheus counter it bumps after. No database work is timed:
the gateway reads a tenant's policy once per 5 s per process.

    .venv/bin/python bench/sampling/run.py [--calls 500000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500_000)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")
    import django

    django.setup()
    from telemetry import metrics, sampling

    policy = sampling.Policy(enabled=True, slow_ms=10_000, costly_amount=Decimal("0.50"), base_rate=Decimal("0.1"))
    rng = random.Random(7)
    calls = []
    for _ in range(args.calls):
        roll = rng.random()
        status = "error" if roll < 0.02 else "ok"
        latency_ms = 12_000 if roll > 0.99 else rng.randint(200, 4_000)
        cost = Decimal("0.75") if 0.97 < roll <= 0.99 else Decimal(rng.randint(1, 9_999)) / Decimal(1_000_000)
        calls.append((status, latency_ms, cost, uuid.uuid4().hex))

    decide = sampling.decide
    start = time.perf_counter()
    kept = 0
    for status, latency_ms, cost, event_id in calls:
        kept += decide(policy, status=status, latency_ms=latency_ms, cost=cost, event_id=event_id).keep
    decide_s = time.perf_counter() - start

    # The gateway's lookup: a dict hit on the per-process cache (primed here, stamped an hour
    # ahead so it stays fresh for the whole run, without a database).
    sampling._policies[1] = (time.monotonic() + 3600, policy)
    start = time.perf_counter()
    for _ in range(args.calls):
        sampling.policy_for(1)
    lookup_s = time.perf_counter() - start

    counter = metrics.TRACE_SAMPLING
    start = time.perf_counter()
    for _ in range(args.calls):
        counter.labels("bench", "drop", "dropped").inc()
    counter_s = time.perf_counter() - start

    per = {
        name: s / args.calls * 1e6 for name, s in (("decide", decide_s), ("lookup", lookup_s), ("counter", counter_s))
    }
    print(f"calls: {args.calls:,}, kept: {kept / args.calls:.1%}")
    print(
        f"decide: {per['decide']:.2f} µs/call; policy_for (cached): {per['lookup']:.2f} µs/call; "
        f"counter: {per['counter']:.2f} µs/call"
    )
    print(f"total per gateway call: {sum(per.values()):.2f} µs")


if __name__ == "__main__":
    main()
