"""How many events the cost engine prices per second in one process.

Loads the real genai-prices catalogue into a throwaway SQLite database, then normalises and
prices a realistic mix of provider usage reports (OpenAI with cached and reasoning tokens,
Anthropic with cache writes, Ollama durations, a long-context Gemini call, and unknown models).

    .venv/bin/python bench/pricing/run.py [--events 200000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()

    db = Path(tempfile.mkdtemp()) / "bench.sqlite3"
    os.environ.pop("REDIS_URL", None)
    os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from chargeback import usage as u
    from chargeback.catalogue import load_catalogue
    from chargeback.pricing import get_price_book, price_usage

    loaded = load_catalogue()
    book = get_price_book(None)
    rng = random.Random(7)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    shapes = [
        (
            "openai",
            "gpt-4o-2024-08-06",
            lambda: u.from_openai_chat(
                {"prompt_tokens": 2400, "completion_tokens": 300, "prompt_tokens_details": {"cached_tokens": 1920}}
            ),
        ),
        (
            "openai",
            "o3-mini",
            lambda: u.from_openai_chat(
                {
                    "prompt_tokens": 900,
                    "completion_tokens": 1800,
                    "completion_tokens_details": {"reasoning_tokens": 1200},
                }
            ),
        ),
        (
            "anthropic",
            "claude-sonnet-4-20250514",
            lambda: u.from_anthropic(
                {
                    "input_tokens": 12,
                    "cache_read_input_tokens": 8000,
                    "cache_creation_input_tokens": 1000,
                    "output_tokens": 400,
                }
            ),
        ),
        (
            "anthropic",
            "claude-3-5-haiku-20241022",
            lambda: u.from_anthropic({"input_tokens": 700, "output_tokens": 90}),
        ),
        (
            "ollama",
            "llama3.1:8b",
            lambda: u.from_ollama(
                {
                    "prompt_eval_count": 300,
                    "prompt_eval_duration": 90_000_000,
                    "eval_count": 120,
                    "eval_duration": 2_400_000_000,
                }
            ),
        ),
        (
            "google",
            "gemini-2.5-pro",
            lambda: u.from_gemini(
                {"promptTokenCount": 240_000, "candidatesTokenCount": 900, "thoughtsTokenCount": 300}
            ),
        ),
        (
            "openai",
            "ft:gpt-4o-mini:acme:unknown",
            lambda: u.from_openai_chat({"prompt_tokens": 10, "completion_tokens": 5}),
        ),
    ]
    # Pre-draw the workload so the loop measures the engine, not the RNG.
    work = [(rng.choice(shapes), start + timedelta(seconds=rng.randrange(30 * 86400))) for _ in range(args.events)]

    began = time.perf_counter()
    priced = unpriced = 0
    for (provider, model, report), at in work:
        result = price_usage(book=book, provider=provider, model=model, at=at, usage=report())
        if result.cost is None:
            unpriced += 1
        else:
            priced += 1
    elapsed = time.perf_counter() - began
    rate = args.events / elapsed
    print(f"catalogue rows: {loaded.total}")
    print(f"events: {args.events:,} (priced {priced:,}, unpriced {unpriced:,})")
    print(
        f"elapsed: {elapsed:.2f} s -> {rate:,.0f} events/s, {elapsed / args.events * 1e6:.1f} µs/event "
        "(normalise + price, one process)"
    )


if __name__ == "__main__":
    main()
