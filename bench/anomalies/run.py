"""Detection quality of the anomaly scorer on labelled synthetic usage.

    /work/main/.venv/bin/python bench/anomalies/run.py [--departments 30] [--weeks 10] [--seed 1]

Per department: a base level, weekly seasonality (weekdays vs weekends, working hours), growth
of up to 4 %/week, multiplicative log-normal noise (σ 0.15) and Poisson/binomial counts. In
the last 4 weeks, labelled events are injected: cost spikes of 3-6× (one hour), drops to
10-30 % of normal, and error bursts (20-50 % errors). Every hour of those 4 weeks is scored with
`telemetry.anomalies.score_point` (the function the hourly task calls), with history that
includes the earlier injected events, exactly as in production. Reports precision and recall
per kind and false alerts per department per week of normal traffic.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")

import django

django.setup()

from telemetry.anomalies import baseline_volume, score_point  # noqa: E402

START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
HOUR = timedelta(hours=1)
# Below this many requests in a typical hour, a 3× cost is within Poisson noise of the call
# count itself (e.g. 4 calls instead of 1.5): such spikes are reported apart.
MIN_TYPICAL_REQUESTS = 10


def poisson(rng: random.Random, lam: float) -> int:
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def simulate(rng: random.Random, weeks: int, eval_weeks: int) -> tuple[dict, dict]:
    """Hourly series for one department and the labels of injected events (hour → kind)."""
    base = rng.uniform(20, 400)  # requests per hour at the weekly peak
    cost_per_request = rng.uniform(0.002, 0.05)
    growth = rng.uniform(0, 0.04)
    hours = weeks * 168
    eval_from = (weeks - eval_weeks) * 168
    labels: dict[int, str] = {}
    candidates = list(range(eval_from, hours))
    rng.shuffle(candidates)
    # ~1.5 % of evaluated hours carry an injected event, never two in a row.
    for h in candidates[: int(len(candidates) * 0.015)]:
        if h - 1 in labels or h + 1 in labels:
            continue
        labels[h] = rng.choice(["spike", "spike", "drop", "errors"])
    series = {"requests": {}, "cost": {}, "tokens": {}, "error_rate": {}, "volume": {}, "factor": {}}
    for h in range(hours):
        at = START + HOUR * h
        weekday = at.weekday() < 5
        working = 8 <= at.hour < 19
        season = (1.0 if working else 0.25) * (1.0 if weekday else 0.3)
        level = base * season * (1 + growth) ** (h / 168)
        kind = labels.get(h)
        factor = 1.0
        if kind == "spike":
            factor = rng.uniform(3, 6)
        elif kind == "drop":
            factor = rng.uniform(0.1, 0.3)
        noise = rng.lognormvariate(0, 0.15)
        requests = poisson(rng, level * noise * (factor if kind == "drop" else 1.0))
        # A cost spike is expensive calls (a bigger model, long prompts), not more calls.
        cost = requests * cost_per_request * rng.lognormvariate(0, 0.05) * (factor if kind == "spike" else 1.0)
        tokens = requests * 1500 * rng.lognormvariate(0, 0.05) * (factor if kind == "spike" else 1.0)
        error_p = rng.uniform(0.2, 0.5) if kind == "errors" else 0.01
        errors = sum(1 for _ in range(requests) if rng.random() < error_p) if requests < 2000 else round(requests * error_p)
        series["requests"][at] = float(requests)
        series["cost"][at] = cost
        series["tokens"][at] = tokens
        series["volume"][at] = requests
        if requests >= 20:
            series["error_rate"][at] = errors / requests
        series["factor"][at] = factor
    return series, {START + HOUR * h: kind for h, kind in labels.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--departments", type=int, default=30)
    parser.add_argument("--weeks", type=int, default=10)
    parser.add_argument("--eval-weeks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    metrics = ("cost", "tokens", "requests", "error_rate")
    counts = {k: {"injected": 0, "detected": 0} for k in ("spike", "spike_quiet", "drop", "drop_quiet", "errors")}
    cost_up_alerts = cost_up_true = 0
    false_alerts = 0
    scored = 0
    for _ in range(args.departments):
        series, labels = simulate(rng, args.weeks, args.eval_weeks)
        first_seen = START
        eval_from = START + HOUR * ((args.weeks - args.eval_weeks) * 168)
        at = eval_from
        end = START + HOUR * (args.weeks * 168)
        while at < end:
            kind = labels.get(at)
            flagged: dict[str, str] = {}
            typical = baseline_volume(requests=_before(series["requests"], at), hour=at, first_seen=first_seen)
            for metric in metrics:
                observed = series[metric].get(at)
                if observed is None:
                    continue
                # History = every earlier hour (with earlier injected events left in).
                history = series[metric]
                score = score_point(
                    metric=metric, observed=observed, history=_before(history, at), hour=at, first_seen=first_seen,
                    volume=series["volume"][at], expected_volume=typical,
                )  # fmt: skip
                scored += 1
                if score is not None and score.severity is not None:
                    flagged[metric] = "up" if score.z > 0 else "down"
            if flagged.get("cost") == "up":
                cost_up_alerts += 1
                cost_up_true += kind == "spike"
            if kind == "spike":
                bucket = "spike" if (typical or 0) >= MIN_TYPICAL_REQUESTS else "spike_quiet"
                counts[bucket]["injected"] += 1
                counts[bucket]["detected"] += flagged.get("cost") == "up"
            elif kind == "drop":
                bucket = "drop" if (typical or 0) >= MIN_TYPICAL_REQUESTS else "drop_quiet"
                counts[bucket]["injected"] += 1
                counts[bucket]["detected"] += flagged.get("requests") == "down"
            elif kind == "errors":
                counts["errors"]["injected"] += 1
                counts["errors"]["detected"] += flagged.get("error_rate") == "up"
            else:
                false_alerts += bool(flagged)  # an hour of normal traffic that raised any alert
            at += HOUR
    dept_weeks = args.departments * args.eval_weeks
    precision = cost_up_true / cost_up_alerts if cost_up_alerts else 1.0
    print(f"departments {args.departments}, {args.weeks} weeks simulated, last {args.eval_weeks} scored; {scored:,} metric-hours scored")
    print(f"cost spikes ≥3×: injected {counts['spike']['injected']}, recall {counts['spike']['detected'] / max(1, counts['spike']['injected']):.3f}, precision {precision:.3f}")
    quiet = counts["spike_quiet"]
    print(f"cost spikes ≥3× in quiet hours (typically < {MIN_TYPICAL_REQUESTS} requests): injected {quiet['injected']}, recall {quiet['detected'] / max(1, quiet['injected']):.3f}")
    print(f"drops to 10-30 %: injected {counts['drop']['injected']}, recall (requests down) {counts['drop']['detected'] / max(1, counts['drop']['injected']):.3f}")
    quiet = counts["drop_quiet"]
    print(f"drops in quiet hours: injected {quiet['injected']}, recall {quiet['detected'] / max(1, quiet['injected']):.3f}")
    print(f"error bursts 20-50 %: injected {counts['errors']['injected']}, recall (error rate up) {counts['errors']['detected'] / max(1, counts['errors']['injected']):.3f}")
    print(f"false alerts on normal hours: {false_alerts} = {false_alerts / dept_weeks:.2f} per department per week")


def _before(history: dict, at: datetime) -> _Window:
    return _Window(history, at)


class _Window(dict):
    """A read-only view of a series strictly before `at` (no copying per scored hour)."""

    def __init__(self, data: dict, at: datetime) -> None:
        super().__init__()
        self.data, self.at = data, at

    def get(self, key, default=None):
        return self.data.get(key, default) if key < self.at else default

    def __getitem__(self, key):
        if key >= self.at:
            raise KeyError(key)
        return self.data[key]

    def __contains__(self, key) -> bool:
        return key < self.at and key in self.data


if __name__ == "__main__":
    main()
