"""Money helpers: the one place where amounts are rounded.

Event costs keep full precision; rounding to the currency's minor unit happens once, on an
invoice or budget display line, half-up (DESIGN.md §4).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

# ISO 4217 minor units for the currencies that don't use two decimals.
MINOR_UNITS = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "VND": 0, "BHD": 3, "KWD": 3, "OMR": 3, "TND": 3, "JOD": 3}


def to_decimal(value: str | int | Decimal) -> Decimal:
    """A Decimal from a string, int or Decimal. Floats are refused: they are not money."""
    if isinstance(value, float):
        raise TypeError("Money must not be built from a float; pass a string.")
    return value if isinstance(value, Decimal) else Decimal(value)


def quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-MINOR_UNITS.get(currency.upper(), 2))


def quantize(amount: Decimal, currency: str = "USD") -> Decimal:
    """Round to the currency's minor unit, half-up."""
    return amount.quantize(quantum(currency), rounding=ROUND_HALF_UP)


def format_money(amount: Decimal | None, currency: str = "USD") -> str:
    if amount is None:
        return "—"
    return f"{quantize(amount, currency):,} {currency}"
