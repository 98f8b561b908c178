"""Page filters that live in the URL (GET parameters): a date range in the tenant's calendar and
a department, validated with messages that name the parameter and say what is wrong. A page
with a bad filter answers 400 and shows the form with the messages, never a 500 or numbers
for a range nobody asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from django.http import HttpResponse, QueryDict
from django.shortcuts import render

from chargeback.models import Department, Membership

MAX_RANGE_DAYS = 366


@dataclass(frozen=True)
class DateRange:
    """Whole local days [start, end] (both inclusive, as people say them) in `tz`."""

    start: date
    end: date
    tz: ZoneInfo

    @property
    def start_at(self) -> datetime:
        return datetime(self.start.year, self.start.month, self.start.day, tzinfo=self.tz)

    @property
    def end_at(self) -> datetime:
        """Local midnight after the last day: the exclusive end the rollup queries take."""
        after = self.end + timedelta(days=1)
        return datetime(after.year, after.month, after.day, tzinfo=self.tz)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


@dataclass
class Filters:
    range: DateRange
    department: Department | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.errors

    def query_string(self) -> str:
        """The filters as GET parameters, for links that must keep them (pagers, tabs)."""
        params = QueryDict(mutable=True)
        params["start"] = self.range.start.isoformat()
        params["end"] = self.range.end.isoformat()
        if self.department is not None:
            params["department"] = self.department.code
        return params.urlencode()


def this_month(*, today: date, tz: ZoneInfo) -> DateRange:
    return DateRange(start=today.replace(day=1), end=today, tz=tz)


def _parse_day(value: str, name: str, errors: dict[str, str], today: date) -> date | None:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        errors[name] = f"{value!r} is not a date; use YYYY-MM-DD, e.g. {today:%Y-%m-01}."
        return None


def parse_filters(
    params: QueryDict, *, membership: Membership, today: date, allow_department: bool = True
) -> Filters:
    """`start`, `end` (dates, default: this month so far) and, for finance/admin, `department`
    (a code of the tenant). Errors are collected per parameter; the range falls back to the
    default so the form can still be shown."""
    tz = membership.tenant.tz
    default = this_month(today=today, tz=tz)
    errors: dict[str, str] = {}
    start = _parse_day(params["start"], "start", errors, today) if params.get("start") else default.start
    end = _parse_day(params["end"], "end", errors, today) if params.get("end") else default.end
    if start is not None and end is not None and not errors:
        if end < start:
            errors["end"] = f"The end ({end:%d %b %Y}) is before the start ({start:%d %b %Y})."
        elif (end - start).days + 1 > MAX_RANGE_DAYS:
            errors["end"] = f"A range covers at most {MAX_RANGE_DAYS} days; this one has {(end - start).days + 1}."
        elif start > today:
            errors["start"] = f"The start ({start:%d %b %Y}) is in the future; nothing has been spent yet."
    filters = Filters(range=default if errors else DateRange(start=start, end=end, tz=tz), errors=errors)
    code = (params.get("department") or "").strip()
    if code and allow_department:
        department = Department.objects.filter(tenant_id=membership.tenant_id, code=code).first()
        if department is None:
            errors["department"] = f"There is no department with the code {code!r} in {membership.tenant.name}."
        else:
            filters.department = department
    return filters


def active_departments(tenant) -> list[Department]:
    """The department choices of a page's filter form."""
    return list(Department.objects.filter(tenant=tenant, active=True).order_by("name"))


def invalid_filters(request, template: str, filters: Filters, context: dict) -> HttpResponse:
    """The page with its filter form and the messages, no numbers: 400."""
    return render(request, template, {"filters": filters, "invalid": True, **context}, status=400)
