"""The cost engine: exact amounts for each provider shape, tiers, dates, overrides, unknowns."""

from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import pytest

from chargeback import usage as u
from chargeback.catalogue import load_catalogue
from chargeback.models import ModelPrice
from chargeback.pricing import Price, PriceBook, cost_of, get_price_book, price_usage
from chargeback.usage import Usage

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
AT = datetime(2025, 6, 1, 12, tzinfo=UTC)


def make_price(**overrides) -> Price:
    values = {
        "id": 1,
        "tenant_id": None,
        "provider": "openai",
        "model_pattern": "gpt-4o",
        "match_type": "exact",
        "effective_from": EPOCH,
        "effective_to": None,
        "input_per_mtok": Decimal("2.50"),
        "cache_read_per_mtok": Decimal("1.25"),
        "output_per_mtok": Decimal("10"),
    }
    values.update(overrides)
    return Price(**values)


def test_openai_cached_and_reasoning_tokens_are_each_billed_once():
    usage = u.from_openai_chat(
        {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 1920},
            "completion_tokens_details": {"reasoning_tokens": 192},
        }
    )
    # 86 uncached × 2.50 + 1920 cached × 1.25 + 300 output × 10, per million
    assert cost_of(usage, make_price()) == Decimal("0.005615")


def test_reasoning_tokens_use_their_own_price_when_one_is_set():
    usage = Usage(input_tokens=0, output_tokens=300, reasoning_tokens=192)
    price = make_price(reasoning_per_mtok=Decimal("20"))
    # 108 visible × 10 + 192 reasoning × 20
    assert cost_of(usage, price) == Decimal("0.00492")


def test_anthropic_cache_reads_and_5m_and_1h_writes_have_their_own_rates():
    usage = u.from_anthropic(
        {
            "input_tokens": 7,
            "cache_read_input_tokens": 12000,
            "cache_creation_input_tokens": 3000,
            "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000},
            "output_tokens": 450,
        }
    )
    price = make_price(
        provider="anthropic",
        input_per_mtok=Decimal("3"),
        cache_read_per_mtok=Decimal("0.30"),
        cache_write_per_mtok=Decimal("3.75"),
        cache_write_1h_per_mtok=Decimal("6"),
        output_per_mtok=Decimal("15"),
    )
    # 7×3 + 12000×0.30 + 2000×3.75 + 1000×6 + 450×15 = 23871, per million
    assert cost_of(usage, price) == Decimal("0.023871")


def test_missing_cache_prices_fall_back_to_the_input_price_not_to_zero():
    usage = Usage(input_tokens=1000, cache_read_input_tokens=400, cache_creation_input_tokens=100, output_tokens=0)
    price = make_price(cache_read_per_mtok=None, input_per_mtok=Decimal("2"))
    assert cost_of(usage, price) == Decimal("0.002")


def test_long_context_tier_reprices_the_whole_request_above_the_threshold():
    price = make_price(
        input_per_mtok=Decimal("3"),
        output_per_mtok=Decimal("15"),
        long_context_threshold_tokens=200_000,
        long_context_input_per_mtok=Decimal("6"),
        long_context_output_per_mtok=Decimal("22.50"),
    )
    assert cost_of(Usage(input_tokens=200_000, output_tokens=1000), price) == Decimal("0.615")
    assert cost_of(Usage(input_tokens=250_000, output_tokens=1000), price) == Decimal("1.5225")


def test_per_request_fee_is_added_once():
    price = make_price(per_request_fee=Decimal("0.001"))
    assert cost_of(Usage(input_tokens=1000, output_tokens=100), price) == Decimal("0.0045")


def test_ollama_is_priced_per_gpu_second_of_reported_compute():
    usage = u.from_ollama(
        {"prompt_eval_count": 11, "prompt_eval_duration": 13074791, "eval_count": 18, "eval_duration": 52479709}
    )
    price = make_price(
        provider="ollama",
        match_type="regex",
        model_pattern=".*",
        input_per_mtok=Decimal(0),
        cache_read_per_mtok=None,
        output_per_mtok=Decimal(0),
        per_gpu_second=Decimal("0.0005"),
    )
    assert usage.compute_ms == 65
    assert cost_of(usage, price) == Decimal("0.0000325")


def test_price_effective_at_the_event_time_is_chosen_across_a_mid_month_change():
    old = make_price(id=1, effective_to=datetime(2025, 3, 15, tzinfo=UTC), input_per_mtok=Decimal("5"))
    new = make_price(id=2, effective_from=datetime(2025, 3, 15, tzinfo=UTC), input_per_mtok=Decimal("4"))
    book = PriceBook([old, new])
    before = price_usage(
        book=book,
        provider="openai",
        model="gpt-4o",
        at=datetime(2025, 3, 14, 23, 59, tzinfo=UTC),
        usage=Usage(input_tokens=1_000_000),
    )
    after = price_usage(
        book=book,
        provider="openai",
        model="gpt-4o",
        at=datetime(2025, 3, 15, tzinfo=UTC),
        usage=Usage(input_tokens=1_000_000),
    )
    assert (before.cost, before.price_id) == (Decimal("5"), 1)
    assert (after.cost, after.price_id) == (Decimal("4"), 2)


def test_tenant_override_wins_over_the_catalogue_and_regex_priority_orders_patterns():
    catalogue = make_price(id=1)
    override = make_price(id=2, tenant_id=7, input_per_mtok=Decimal("2"))
    broad = make_price(id=3, match_type="regex", model_pattern="gpt-4.*", priority=1, input_per_mtok=Decimal("9"))
    narrow = make_price(
        id=4, match_type="regex", model_pattern="gpt-4o-mini.*", priority=5, input_per_mtok=Decimal("0.15")
    )
    book = PriceBook([catalogue, override, broad, narrow], tenant_id=7)
    assert book.find("openai", "gpt-4o", AT).id == 2
    assert book.find("openai", "GPT-4o-mini-2024-07-18", AT).id == 4
    assert book.find("openai", "gpt-4-turbo", AT).id == 3
    # OpenRouter/LiteLLM-style prefixes naming the same provider are stripped.
    assert book.find("openai", "openai/gpt-4o", AT).id == 2


def test_unknown_model_is_unpriced_with_no_cost_never_zero():
    result = price_usage(
        book=PriceBook([make_price()]), provider="openai", model="gpt-99", at=AT, usage=Usage(input_tokens=5)
    )
    assert (result.cost, result.provenance, result.price_id) == (None, "unpriced", None)


def test_every_spelling_of_a_model_finds_its_price_and_the_memo_stays_bounded(monkeypatch):
    from chargeback import pricing

    monkeypatch.setattr(pricing, "MAX_SPELLINGS", 3)
    book = PriceBook([make_price()])
    spellings = [("openai", "gpt-4o"), ("OpenAI", "GPT-4o"), (" openai ", "openai/gpt-4o"), ("openai", "Gpt-4O")]
    for _ in range(2):  # the second round is answered from the memo where it has room
        assert [book.find(p, m, AT).id for p, m in spellings] == [1, 1, 1, 1]
    for n in range(10):
        assert book.find("openai", f"gpt-99-{n}", AT) is None
    assert len(book._as_spelled) <= 3 and len(book._candidates) <= 3


def test_reported_cost_is_used_only_when_no_price_matches():
    book = PriceBook([make_price()])
    unknown = price_usage(
        book=book,
        provider="acme-ai",
        model="x",
        at=AT,
        usage=Usage(),
        reported_cost=Decimal("0.42"),
        reported_currency="EUR",
    )
    assert (unknown.cost, unknown.currency, unknown.provenance) == (Decimal("0.42"), "EUR", "reported")
    known = price_usage(
        book=book,
        provider="openai",
        model="gpt-4o",
        at=AT,
        usage=Usage(input_tokens=1_000_000),
        reported_cost=Decimal("99"),
    )
    assert (known.cost, known.provenance) == (Decimal("2.5"), "computed")


def test_incomplete_usage_is_marked_estimated():
    result = price_usage(
        book=PriceBook([make_price()]),
        provider="openai",
        model="gpt-4o",
        at=AT,
        usage=Usage(output_tokens=10),
        estimated=True,
    )
    assert (result.cost, result.provenance) == (Decimal("0.0001"), "estimated")


@pytest.mark.django_db
def test_price_book_reloads_after_a_price_changes(acme, gpt4o_price, django_capture_on_commit_callbacks):
    book = get_price_book(acme.id)
    assert book.find("openai", "gpt-4o", AT).input_per_mtok == Decimal("2.50")
    with django_capture_on_commit_callbacks(execute=True):
        ModelPrice.objects.create(
            tenant=acme, provider="openai", model_pattern="gpt-4o", effective_from=EPOCH, input_per_mtok=Decimal("2")
        )
    assert get_price_book(acme.id).find("openai", "gpt-4o", AT).input_per_mtok == Decimal("2")


CATALOGUE_CASES = [
    ("openai", "gpt-4o", {"input_tokens": 2006, "cache_read_tokens": 1920, "output_tokens": 300}),
    ("openai", "gpt-4o-mini-2024-07-18", {"input_tokens": 10_000, "cache_read_tokens": 2048, "output_tokens": 900}),
    ("openai", "o3", {"input_tokens": 5000, "output_tokens": 8000}),
    (
        "anthropic",
        "claude-sonnet-4-20250514",
        {"input_tokens": 15007, "cache_read_tokens": 12000, "cache_write_tokens": 3000, "output_tokens": 450},
    ),
    ("anthropic", "claude-3-5-haiku-20241022", {"input_tokens": 800, "output_tokens": 120}),
    ("google", "gemini-2.5-pro", {"input_tokens": 250_000, "cache_read_tokens": 1000, "output_tokens": 1000}),
    ("google", "gemini-2.5-pro", {"input_tokens": 150_000, "output_tokens": 1000}),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("provider", "model", "counts"), CATALOGUE_CASES)
def test_loaded_catalogue_prices_exactly_as_genai_prices_itself(provider, model, counts):
    load_catalogue()
    ours = get_price_book(None).find(provider, model, AT)
    assert ours is not None, f"{provider}/{model} not in the loaded catalogue"
    usage = Usage(
        input_tokens=counts["input_tokens"],
        cache_read_input_tokens=counts.get("cache_read_tokens", 0),
        cache_creation_input_tokens=counts.get("cache_write_tokens", 0),
        output_tokens=counts["output_tokens"],
    )
    expected = genai_prices.calc_price(
        genai_prices.Usage(**counts), model, provider_id=provider, genai_request_timestamp=AT
    )
    assert cost_of(usage, ours) == expected.total_price


@pytest.mark.django_db
def test_catalogue_load_is_idempotent_and_seeds_an_internal_ollama_rate():
    first = load_catalogue()
    second = load_catalogue()
    assert first.created > 2000
    assert (second.created, second.updated) == (0, 0)
    ollama = get_price_book(None).find("ollama", "llama3.1:8b", AT)
    assert ollama.per_gpu_second == Decimal("0.0005")
