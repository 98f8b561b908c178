"""Formatting for pages: money with its currency (rounded once, by chargeback.money), token
counts with thousands separators, percentages."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django import template

from chargeback.money import format_money
from llmobs import units
from telemetry import anomalies

register = template.Library()


@register.filter
def money(amount: Decimal | int | str | None, currency: str = "USD") -> str:
    """`{{ amount|money:currency }}` → "1,234.57 USD"; None → "—" (unpriced is not zero)."""
    if amount is None or amount == "":
        return format_money(None, currency)
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    except InvalidOperation:
        return ""
    return format_money(value, currency or "USD")


@register.filter
def call_cost(amount: Decimal | None, currency: str = "USD") -> str:
    """One call's cost, to 1/100 of a cent ("0.0042 USD"): single calls are mostly fractions
    of a cent, and "0.00 USD" would read as free. Totals use `money` (rounded to the cent)."""
    if amount is None:
        return format_money(None, currency)
    return f"{amount.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP):,} {currency}"


@register.filter
def tokens(value: int | None) -> str:
    """12345678 → "12,345,678"."""
    if value is None or value == "":
        return "—"
    return f"{int(value):,}"


@register.filter
def percent(value: Decimal | float | int | None, places: int = 0) -> str:
    """A percentage already in percent units: 83.456 → "83%" (or "83.5%" with :1)."""
    if value is None or value == "":
        return "—"
    return f"{Decimal(str(value)):,.{int(places)}f}%"


@register.filter
def gauge_width(value: Decimal | float | int | None) -> str:
    """A CSS width for a gauge bar: the percentage clamped to 0-100."""
    if value is None:
        return "0"
    return f"{max(0, min(100, float(value))):.1f}"


@register.filter
def rate_percent(value: float | Decimal | None, places: int = 1) -> str:
    """A rate as a fraction (0.0234) shown in percent ("2.3%")."""
    return units.format_rate(value, places)


@register.filter
def ms(value: float | int | None) -> str:
    """Milliseconds: "840 ms" below ten seconds, else seconds with one decimal ("12.4 s")."""
    return units.format_ms(value)


@register.filter
def anomaly_value(anomaly, which: str) -> str:
    """An anomaly's observed or expected value in its metric's unit."""
    return anomalies.format_value(anomaly.metric, getattr(anomaly, which), anomaly.tenant.currency)


@register.filter
def get_item(mapping: dict | None, key: str):
    """`row|get_item:name`: a dict value by a key held in a variable (None when absent)."""
    return mapping.get(key) if isinstance(mapping, dict) else None
