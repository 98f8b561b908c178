"""Normalising each provider's usage report into the canonical buckets (pure functions)."""

import pytest

from chargeback import usage as u
from chargeback.usage import Usage, UsageError


def test_openai_cached_tokens_are_a_subset_of_prompt_tokens():
    got = u.from_openai_chat(
        {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 192},
        }
    )
    assert got == Usage(input_tokens=2006, cache_read_input_tokens=1920, output_tokens=300, reasoning_tokens=192)
    assert got.uncached_input_tokens == 86


def test_openai_responses_api_uses_the_same_inclusive_semantics():
    got = u.from_openai_responses(
        {
            "input_tokens": 1500,
            "input_tokens_details": {"cached_tokens": 1024},
            "output_tokens": 700,
            "output_tokens_details": {"reasoning_tokens": 500},
            "total_tokens": 2200,
        }
    )
    assert got == Usage(input_tokens=1500, cache_read_input_tokens=1024, output_tokens=700, reasoning_tokens=500)


def test_anthropic_cache_counts_are_added_to_input_because_anthropic_reports_them_outside():
    got = u.from_anthropic(
        {
            "input_tokens": 7,
            "cache_creation_input_tokens": 3000,
            "cache_read_input_tokens": 12000,
            "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000},
            "output_tokens": 450,
        }
    )
    assert got == Usage(
        input_tokens=15007,
        cache_read_input_tokens=12000,
        cache_creation_input_tokens=3000,
        cache_creation_1h_input_tokens=1000,
        output_tokens=450,
    )


def test_anthropic_stream_takes_latest_values_instead_of_summing():
    start = {"input_tokens": 12, "cache_read_input_tokens": 4000, "cache_creation_input_tokens": 0, "output_tokens": 1}
    state = u.merge_anthropic_stream(None, start)
    # message_delta events carry cumulative output and may omit the cache counts.
    state = u.merge_anthropic_stream(state, {"output_tokens": 40})
    state = u.merge_anthropic_stream(state, {"output_tokens": 95})
    assert state == Usage(input_tokens=4012, cache_read_input_tokens=4000, output_tokens=95)


def test_ollama_durations_are_nanoseconds_and_become_compute_milliseconds():
    got = u.from_ollama(
        {
            "total_duration": 174560334,
            "load_duration": 101397084,
            "prompt_eval_count": 11,
            "prompt_eval_duration": 13074791,
            "eval_count": 18,
            "eval_duration": 52479709,
        }
    )
    assert got == Usage(input_tokens=11, output_tokens=18, compute_ms=65)


def test_ollama_fully_cached_prompt_without_prompt_eval_count_is_not_an_error():
    got = u.from_ollama({"prompt_eval_cached_count": 40, "eval_count": 5, "eval_duration": 2_000_000_000})
    assert got == Usage(input_tokens=40, cache_read_input_tokens=40, output_tokens=5, compute_ms=2000)


def test_gemini_thoughts_are_outside_candidates_and_become_reasoning_output():
    got = u.from_gemini(
        {
            "promptTokenCount": 1000,
            "cachedContentTokenCount": 600,
            "candidatesTokenCount": 200,
            "thoughtsTokenCount": 50,
        }
    )
    assert got == Usage(input_tokens=1000, cache_read_input_tokens=600, output_tokens=250, reasoning_tokens=50)


def test_otel_attributes_accept_string_integers_and_current_cache_names():
    got = u.from_otel(
        {
            "gen_ai.usage.input_tokens": "1200",
            "gen_ai.usage.output_tokens": 80,
            "gen_ai.usage.cache_read.input_tokens": 1000,
            "gen_ai.usage.cache_creation.input_tokens": 100,
        }
    )
    assert got == Usage(
        input_tokens=1200, cache_read_input_tokens=1000, cache_creation_input_tokens=100, output_tokens=80
    )


def test_otel_exclusive_anthropic_input_is_not_double_normalised():
    # Input smaller than its own cache counts can only be Anthropic's exclusive number.
    got = u.from_otel({"gen_ai.usage.input_tokens": 9, "gen_ai.usage.cache_read.input_tokens": 5000})
    assert got.input_tokens == 5009
    assert got.uncached_input_tokens == 9


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"input_tokens": -1}, "input_tokens"),
        ({"input_tokens": 10, "cache_read_input_tokens": 11}, "input_tokens"),
        ({"output_tokens": 5, "reasoning_tokens": 6}, "reasoning_tokens"),
        ({"input_tokens": True}, "input_tokens"),
        ({"input_tokens": 1.5}, "input_tokens"),
        ({"input_tokens": "ten"}, "input_tokens"),
        ({"input_tokens": 10, "cache_creation_input_tokens": 2, "cache_creation_1h_input_tokens": 3}, "input_tokens"),
    ],
)
def test_canonical_usage_rejects_inconsistent_buckets_naming_the_field(raw, field):
    with pytest.raises(UsageError) as info:
        u.from_canonical(raw)
    assert info.value.field in (field, "cache_creation_1h_input_tokens")


def test_canonical_usage_round_trips_to_event_fields():
    got = u.from_canonical({"input_tokens": 10, "output_tokens": 4, "compute_ms": 250})
    assert got.to_fields() == {
        "input_tokens": 10,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_creation_1h_input_tokens": 0,
        "output_tokens": 4,
        "reasoning_tokens": 0,
        "compute_ms": 250,
    }
