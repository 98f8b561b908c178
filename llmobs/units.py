"""How quantities read everywhere: pages, e-mails, exports' summaries and anomaly explanations
(money has its own rules in chargeback/money.py)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

NONE = "—"


def format_ms(value: float | int | Decimal | None) -> str:
    """Milliseconds: "840 ms" below ten seconds, else seconds with one decimal ("12.4 s")."""
    if value is None or value == "":
        return NONE
    value = float(value)
    return f"{value:,.0f} ms" if value < 10_000 else f"{value / 1000:,.1f} s"


def format_rate(value: float | Decimal | None, places: int = 1) -> str:
    """A rate given as a fraction (0.0234) in percent ("2.3%")."""
    if value is None or value == "":
        return NONE
    return f"{Decimal(str(value)) * 100:,.{int(places)}f}%"


def format_count(value: float | int | Decimal | None) -> str:
    """A whole count with thousands separators, rounded half up ("12,346")."""
    if value is None or value == "":
        return NONE
    return f"{Decimal(str(value)).quantize(Decimal(1), rounding=ROUND_HALF_UP):,}"
