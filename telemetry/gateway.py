"""The gateway call: route → rate limit → budget reservation → provider (retries, fallbacks,
circuit breaker) → settle → record, for both the OpenAI-compatible endpoint and the internal
chat. Entry points format the results; nothing here knows about HTTP.

Every attempt (retry or fallback) becomes its own UsageEvent, linked by `operation_id` and
priced at the model that served it. Recording happens off the response path (`recorder`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from chargeback import enforcement
from chargeback.models import ApiKey, Route, Tenant
from chargeback.pricing import PriceBook, PricedCost, get_price_book, price_usage
from chargeback.usage import Usage, with_estimate
from telemetry import capture, metrics, recorder, sampling, tracing
from telemetry.models import UsageEvent
from telemetry.providers import ChatRequest, ChatResult, ProviderError, RouteConfig, get_adapter, text_of
from telemetry.providers.demo import estimate_tokens
from telemetry.ratelimit import RateLimited, admission

logger = logging.getLogger(__name__)

ROUTE_CACHE_SECONDS = 5.0


# --- errors -------------------------------------------------------------------------------------


class GatewayError(Exception):
    """An error for the caller: HTTP status, OpenAI-style type/code, message, extras."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type
        self.param = param
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code, "param": self.param}
        error.update(self.extra)
        return {"error": error}


def _from_provider(exc: ProviderError) -> GatewayError:
    if exc.kind == "timeout":
        return GatewayError(504, "upstream_timeout", exc.message, type="api_error")
    if exc.kind == "circuit_open":
        return GatewayError(503, "upstream_unavailable", exc.message, type="api_error")
    if exc.kind == "rate_limited":
        headers = {"Retry-After": str(int(exc.retry_after or 1))}
        return GatewayError(429, "upstream_rate_limited", exc.message, type="rate_limit_error", headers=headers)
    if exc.kind == "bad_request" and 400 <= exc.status < 500:
        status = exc.status if exc.status in (400, 404, 413, 422) else 400
        return GatewayError(status, "upstream_rejected", exc.message)
    return GatewayError(502, "upstream_error", exc.message, type="api_error")


# --- routes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    id: int
    alias: str
    config: RouteConfig
    fallbacks: tuple[str, ...]
    max_retries: int
    default_max_tokens: int
    chat_enabled: bool


_routes: dict[tuple[int, str], tuple[float, ResolvedRoute | None]] = {}
_routes_lock = threading.Lock()
_configured_models: dict[int, tuple[float, frozenset[str]]] = {}


def get_route(tenant_id: int, alias: str) -> ResolvedRoute | None:
    """The tenant's enabled route for `alias` (cached a few seconds per process: routes are
    configuration, read on every call). Only this tenant's routes are ever considered."""
    now = time.monotonic()
    entry = _routes.get((tenant_id, alias))
    if entry is not None and now - entry[0] < ROUTE_CACHE_SECONDS:
        return entry[1]
    row = Route.objects.filter(tenant_id=tenant_id, alias=alias, enabled=True).first()
    resolved = None
    if row is not None:
        resolved = ResolvedRoute(
            id=row.pk,
            alias=row.alias,
            config=RouteConfig(
                provider=row.provider,
                upstream_model=row.upstream_model,
                base_url=row.base_url,
                credential_env=row.credential_env,
                timeout_seconds=float(row.timeout_seconds),
            ),
            fallbacks=tuple(a for a in (row.fallbacks or []) if isinstance(a, str)),
            max_retries=row.max_retries,
            default_max_tokens=row.default_max_tokens,
            chat_enabled=row.chat_enabled,
        )
    with _routes_lock:
        _routes[(tenant_id, alias)] = (now, resolved)
    return resolved


def metric_model(tenant_id: int, model: str) -> str:
    """`model` when some route of the tenant is configured for it, else "other"."""
    now = time.monotonic()
    entry = _configured_models.get(tenant_id)
    if entry is None or now - entry[0] > 60:
        names = Route.objects.filter(tenant_id=tenant_id).values_list("alias", "upstream_model")
        entry = (now, frozenset(n for pair in names for n in pair))
        _configured_models[tenant_id] = entry
    return model if model in entry[1] else "other"


def forget_routes() -> None:
    """Drop the per-process route, model-label, price-book and sampling-policy caches (tests,
    admin changes)."""
    with _routes_lock:
        _routes.clear()
        _configured_models.clear()
        _books.clear()
    sampling.forget_policies()


_books: dict[int, tuple[float, PriceBook]] = {}
BOOK_CHECK_SECONDS = 1.0


def price_book(tenant_id: int) -> PriceBook:
    """`get_price_book`, asked at most once a second per tenant: its freshness check is a cache
    (Redis) round trip, too dear for every call. A price change reaches the gateway within 1 s."""
    now = time.monotonic()
    entry = _books.get(tenant_id)
    if entry is not None and now - entry[0] < BOOK_CHECK_SECONDS:
        return entry[1]
    book = get_price_book(tenant_id)
    _books[tenant_id] = (now, book)
    return book


# --- circuit breaker ------------------------------------------------------------------------------


class CircuitBreaker:
    """Per upstream endpoint, per process. Opens after `threshold` consecutive failures; after
    `cooldown` seconds lets one trial call through (half-open); its success closes the circuit,
    its failure opens it for another cool-down."""

    def __init__(self, *, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_in_flight = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        with self._lock:
            if self.opened_at is None:
                return True
            if time.monotonic() - self.opened_at < self.cooldown or self.trial_in_flight:
                return False
            self.trial_in_flight = True
            return True

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self.opened_at = None
            self.trial_in_flight = False

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.trial_in_flight or self.failures >= self.threshold:
                self.opened_at = time.monotonic()
            self.trial_in_flight = False


_breakers: dict[str, CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(endpoint: str) -> CircuitBreaker:
    breaker = _breakers.get(endpoint)
    if breaker is None:
        with _breakers_lock:
            breaker = _breakers.setdefault(
                endpoint,
                CircuitBreaker(
                    threshold=int(getattr(settings, "LLMOBS_BREAKER_FAILURES", 5)),
                    cooldown=float(getattr(settings, "LLMOBS_BREAKER_COOLDOWN_SECONDS", 30)),
                ),
            )
    return breaker


def reset_breakers() -> None:
    with _breakers_lock:
        _breakers.clear()


def _backoff(attempt: int, retry_after: float | None) -> float:
    base = float(getattr(settings, "LLMOBS_RETRY_BACKOFF_SECONDS", 0.25))
    delay = base * (2**attempt) * (0.5 + random.random())  # noqa: S311 - jitter
    if retry_after:
        delay = max(delay, min(retry_after, 10.0))
    return min(delay, 10.0)


# --- the call ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class CallContext:
    """Who is calling and how the call is attributed."""

    tenant: Tenant
    source: str = UsageEvent.Source.GATEWAY
    api_key: ApiKey | None = None
    department_id: int | None = None
    department_code: str = ""
    user_ref: str = ""
    feature: str = ""
    session_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_key(cls, key: ApiKey, **attribution: Any) -> CallContext:
        user_ref = attribution.pop("user_ref", "") or (key.user.get_username() if key.user_id else "")
        return cls(
            tenant=key.tenant,
            api_key=key,
            department_id=key.department_id,
            department_code=key.department.code if key.department_id else "",
            user_ref=user_ref,
            **attribution,
        )


@dataclass(slots=True)
class Outcome:
    """A finished call, as the entry points need it."""

    event_id: str
    operation_id: str
    route_alias: str
    provider: str
    served_model: str
    text: str
    finish_reason: str
    usage: Usage
    priced: PricedCost
    upstream_ms: float = 0.0


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """chars/4 plus a few tokens of framing per message: cheap and close enough to reserve."""
    return sum(estimate_tokens(text_of(m.get("content"))) + 4 for m in messages)


class Operation:
    """One gateway operation: its routes, reservation and per-attempt events."""

    def __init__(self, *, ctx: CallContext, alias: str, request: ChatRequest, require_chat: bool = False) -> None:
        self.ctx = ctx
        self.alias = alias
        self.request = request
        self.operation_id = uuid.uuid4().hex
        self.started_at = timezone.now()
        self.prompt_estimate = estimate_prompt_tokens(request.messages)
        route = get_route(ctx.tenant.pk, alias)
        if route is None or (require_chat and not route.chat_enabled):
            raise GatewayError(
                404,
                "model_not_found",
                f"The model '{alias}' does not exist or you do not have access to it.",
                param="model",
            )
        self.route = route
        if not request.max_tokens:
            request.max_tokens = route.default_max_tokens
        # The key's rate limit is checked with the first reservation (one Redis round trip for
        # both, chargeback/enforcement.py), before any upstream call.
        self._admission = (
            admission(key=ctx.api_key, tokens=self.prompt_estimate + request.max_tokens)
            if ctx.api_key is not None
            else None
        )
        self.book = price_book(ctx.tenant.pk)
        self.upstream_ms = 0.0

    def chain(self) -> Iterator[ResolvedRoute]:
        yield self.route
        seen = {self.route.alias}
        for alias in self.route.fallbacks:
            if alias in seen:
                continue
            seen.add(alias)
            fallback = get_route(self.ctx.tenant.pk, alias)
            if fallback is not None:
                yield fallback

    # -- budgets --

    def reserve(self, route: ResolvedRoute) -> enforcement.Reservation:
        estimate = price_usage(
            book=self.book,
            provider=route.config.provider,
            model=route.config.upstream_model,
            at=self.started_at,
            usage=Usage(input_tokens=self.prompt_estimate, output_tokens=self.request.max_tokens),
        )
        scope = enforcement.BudgetScope(
            tenant_id=self.ctx.tenant.pk,
            department_id=self.ctx.department_id,
            user_ref=self.ctx.user_ref,
            models=(route.config.upstream_model, route.alias),
            tags=self._tags(),
        )
        check, self._admission = self._admission, None  # once per operation, not per route
        try:
            return enforcement.reserve(
                scope=scope, amount=estimate.cost or Decimal(0), at=self.started_at, admission=check
            )
        except RateLimited as exc:
            raise GatewayError(
                429,
                "rate_limit_exceeded",
                str(exc),
                type="rate_limit_error",
                headers={"Retry-After": str(exc.retry_after)},
            ) from exc
        except enforcement.BudgetExceeded as exc:
            self.record(route=route, status=UsageEvent.Status.BLOCKED, error_type="budget_exceeded")
            raise GatewayError(
                402,
                "budget_exceeded",
                exc.message,
                type="budget_exceeded",
                extra={"budget": exc.to_dict()},
            ) from exc

    def settle(self, reservation: enforcement.Reservation, priced: PricedCost | None) -> None:
        enforcement.settle(reservation, actual=priced.cost if priced is not None else None)
        if reservation.budgets:
            left = enforcement.remaining(reservation)
            if left is not None:
                metrics.BUDGET_REMAINING.labels(self.ctx.tenant.slug, self.ctx.department_code or "-").set(float(left))

    def _tags(self) -> dict[str, str]:
        tags = dict(self.ctx.tags)
        if self.ctx.feature:
            tags.setdefault("feature", self.ctx.feature)
        return tags

    # -- recording --

    def price(self, route: ResolvedRoute, served_model: str, usage: Usage, *, estimated: bool) -> PricedCost:
        priced = price_usage(
            book=self.book,
            provider=route.config.provider,
            model=served_model,
            at=self.started_at,
            usage=usage,
            estimated=estimated,
        )
        if priced.cost is None and served_model != route.config.upstream_model:
            # Providers often answer with a dated snapshot name; fall back to the configured one.
            priced = price_usage(
                book=self.book,
                provider=route.config.provider,
                model=route.config.upstream_model,
                at=self.started_at,
                usage=usage,
                estimated=estimated,
            )
        return priced

    def record(
        self,
        *,
        route: ResolvedRoute,
        status: str,
        event_id: str | None = None,
        served_model: str = "",
        usage: Usage | None = None,
        priced: PricedCost | None = None,
        started: float | None = None,
        ttft_s: float | None = None,
        error_type: str = "",
        span=None,
        finish_reason: str = "",
        completion: str | None = None,
    ) -> str:
        event_id = event_id or uuid.uuid4().hex
        usage = usage or Usage()
        if priced is None:
            priced = PricedCost(Decimal(0), self.ctx.tenant.currency, "computed", None)
        latency_s = time.perf_counter() - started if started is not None else None
        model = served_model or route.config.upstream_model
        usage_fields = usage.to_fields()
        ctx = self.ctx
        event = UsageEvent(
            tenant_id=ctx.tenant.pk,
            event_id=event_id,
            operation_id=self.operation_id,
            source=ctx.source,
            department_id=ctx.department_id,
            department_code=ctx.department_code,
            user_ref=ctx.user_ref,
            api_key_id=ctx.api_key.pk if ctx.api_key is not None else None,
            api_key_prefix=ctx.api_key.prefix if ctx.api_key is not None else "",
            provider=route.config.provider,
            requested_model=self.alias,
            model=model,
            operation="chat",
            occurred_at=self.started_at,
            latency_ms=int(latency_s * 1000) if latency_s is not None else None,
            ttft_ms=int(ttft_s * 1000) if ttft_s is not None else None,
            status=status,
            error_type=error_type[:128],
            session_id=ctx.session_id,
            feature=ctx.feature,
            tags=self._tags(),
            **usage_fields,
            **priced.to_fields(),
        )
        # One sampling decision for the span and the captured text; the event is always kept.
        decision = sampling.decide(
            sampling.policy_for(ctx.tenant.pk),
            status=status,
            latency_ms=event.latency_ms,
            cost=priced.cost if priced.currency == ctx.tenant.currency else None,
            event_id=event_id,
        )
        event.sampling = decision.reason
        if span is not None:
            span_context = span.get_span_context()
            event.trace_id = format(span_context.trace_id, "032x")
            event.span_id = format(span_context.span_id, "016x")
            self._end_span(span, event=event, status=status, finish_reason=finish_reason, decision=decision)
        captured = None
        if completion is not None and decision.keep and capture.should_capture(ctx.tenant):
            captured = capture.build_capture(
                tenant=ctx.tenant,
                event_id=event_id,
                operation_id=self.operation_id,
                department_code=ctx.department_code,
                model=model,
                messages=self.request.messages,
                completion=completion,
            )
        recorder.record(event, captured)
        labels = (
            ctx.tenant.slug,
            ctx.department_code or "-",
            route.config.provider,
            metric_model(ctx.tenant.pk, route.config.upstream_model),
        )
        metrics.TRACE_SAMPLING.labels(ctx.tenant.slug, "keep" if decision.keep else "drop", decision.reason).inc()
        metrics.observe_attempt(
            labels=labels,
            status=status,
            usage_fields=usage_fields,
            cost=priced.cost,
            currency=priced.currency,
            duration_s=latency_s,
            ttft_s=ttft_s,
        )
        return event_id

    def _end_span(
        self, span, *, event: UsageEvent, status: str, finish_reason: str, decision: sampling.Decision
    ) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("gen_ai.response.model", event.model)
        span.set_attribute("gen_ai.usage.input_tokens", event.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", event.output_tokens)
        if event.cache_read_input_tokens:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", event.cache_read_input_tokens)
        if event.cache_creation_input_tokens:
            span.set_attribute("gen_ai.usage.cache_creation.input_tokens", event.cache_creation_input_tokens)
        if event.reasoning_tokens:
            span.set_attribute("gen_ai.usage.reasoning.output_tokens", event.reasoning_tokens)
        if finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        span.set_attribute("gen_ai.response.id", event.event_id)
        span.set_attribute("gen_ai.operation.id", self.operation_id)
        if event.cost is not None:
            span.set_attribute("llmobs.cost", str(event.cost))
            span.set_attribute("llmobs.currency", event.currency)
        span.set_attribute("llmobs.department", event.department_code)
        span.set_attribute("llmobs.status", status)
        span.set_attribute("llmobs.event_id", event.event_id)
        if status != UsageEvent.Status.OK and status != UsageEvent.Status.CANCELLED:
            span.set_attribute("error.type", event.error_type or status)
            span.set_status(Status(StatusCode.ERROR, event.error_type or status))
        # Read by tracing.SampledSpanProcessor at span end: a dropped span reaches no exporter.
        span.set_attribute(tracing.KEEP_ATTRIBUTE, decision.keep)
        span.set_attribute(tracing.REASON_ATTRIBUTE, decision.reason)
        span.end()

    # -- attempts --

    def attempts(self) -> Iterator[tuple[ResolvedRoute, int, enforcement.Reservation, CircuitBreaker]]:
        """Every (route, attempt number) to try, in order, with the route's reservation. The
        caller reports each attempt's result through `failed()`/`succeeded()`."""
        for route in self.chain():
            reservation = self.reserve(route)
            breaker = breaker_for(route.config.endpoint)
            self._stop_route = False
            try:
                for attempt in range(route.max_retries + 1):
                    if attempt and self._last_error is not None:
                        pause = _backoff(attempt - 1, self._last_error.retry_after)
                        time.sleep(pause)
                        self.upstream_ms += pause * 1000
                    if not breaker.allow():
                        self._last_error = ProviderError(
                            503,
                            f"The upstream {route.config.provider} endpoint is failing; circuit open.",
                            kind="circuit_open",
                        )
                        self.record(route=route, status=UsageEvent.Status.ERROR, error_type="circuit_open")
                        break
                    yield route, attempt, reservation, breaker
                    if self._done or self._stop_route:
                        return
            finally:
                # A stream that opened keeps its hold until it ends (settled by StreamedCall).
                if not reservation.settled and not self._done:
                    self.settle(reservation, None)
            if self._fatal:
                return

    _last_error: ProviderError | None = None
    _done = False
    _fatal = False
    _stop_route = False

    def failed(
        self,
        *,
        route: ResolvedRoute,
        breaker: CircuitBreaker,
        exc: ProviderError,
        started: float,
        span,
        event_id: str | None = None,
        usage: Usage | None = None,
    ) -> None:
        self._last_error = exc
        self.upstream_ms += (time.perf_counter() - started) * 1000
        if exc.retryable:
            breaker.failure()
        else:
            # The upstream answered (4xx): healthy endpoint, bad request. No retry, no fallback.
            breaker.success()
            self._fatal = True
            self._stop_route = True
        status = {
            "timeout": UsageEvent.Status.TIMEOUT,
            "rate_limited": UsageEvent.Status.RATE_LIMITED,
        }.get(exc.kind, UsageEvent.Status.ERROR)
        priced = self.price(route, route.config.upstream_model, usage, estimated=True) if usage else None
        self.record(
            route=route,
            status=status,
            event_id=event_id,
            usage=usage,
            priced=priced,
            started=started,
            error_type=f"{exc.kind}:{exc.status}",
            span=span,
        )

    def final_error(self) -> GatewayError:
        if self._last_error is None:
            return GatewayError(502, "upstream_error", "No upstream could serve the request.", type="api_error")
        return _from_provider(self._last_error)


def complete(*, ctx: CallContext, alias: str, request: ChatRequest, require_chat: bool = False) -> Outcome:
    """Run a non-streamed chat call to completion (or raise GatewayError)."""
    op = Operation(ctx=ctx, alias=alias, request=request, require_chat=require_chat)
    metrics.IN_FLIGHT.labels(ctx.tenant.slug).inc()
    try:
        for route, _attempt, reservation, breaker in op.attempts():
            adapter = get_adapter(route.config.provider)
            span = tracing.start_client_span(
                operation="chat", provider=route.config.provider, request_model=route.config.upstream_model
            )
            started = time.perf_counter()
            try:
                result: ChatResult = adapter.complete(route.config, request)
            except ProviderError as exc:
                op.failed(route=route, breaker=breaker, exc=exc, started=started, span=span)
                continue
            op.upstream_ms += (time.perf_counter() - started) * 1000
            breaker.success()
            priced = op.price(route, result.served_model, result.usage, estimated=False)
            op.settle(reservation, priced)
            event_id = op.record(
                route=route,
                status=UsageEvent.Status.OK,
                served_model=result.served_model,
                usage=result.usage,
                priced=priced,
                started=started,
                span=span,
                finish_reason=result.finish_reason,
                completion=result.text,
            )
            op._done = True
            return Outcome(
                event_id=event_id,
                operation_id=op.operation_id,
                route_alias=route.alias,
                provider=route.config.provider,
                served_model=result.served_model,
                text=result.text,
                finish_reason=result.finish_reason,
                usage=result.usage,
                priced=priced,
                upstream_ms=op.upstream_ms,
            )
        raise op.final_error()
    finally:
        metrics.IN_FLIGHT.labels(ctx.tenant.slug).dec()


class StreamedCall:
    """A streamed chat call. `open()` retries and falls back until an upstream delivers its
    first delta (or raises GatewayError); iterating yields text deltas; `outcome` is set once the
    stream ends. If the consumer stops early (client disconnect), the attempt is recorded as
    `cancelled` with usage estimated from what was delivered."""

    def __init__(self, *, ctx: CallContext, alias: str, request: ChatRequest, require_chat: bool = False) -> None:
        self.op = Operation(ctx=ctx, alias=alias, request=request, require_chat=require_chat)
        self.event_id = ""
        self.outcome: Outcome | None = None
        self.error: GatewayError | None = None
        self._stream = None
        self._first: str | None = None
        self._exhausted = False
        self._finished = False

    @property
    def operation_id(self) -> str:
        return self.op.operation_id

    def open(self) -> StreamedCall:
        op = self.op
        metrics.IN_FLIGHT.labels(op.ctx.tenant.slug).inc()
        try:
            for route, _attempt, reservation, breaker in op.attempts():
                adapter = get_adapter(route.config.provider)
                span = tracing.start_client_span(
                    operation="chat", provider=route.config.provider, request_model=route.config.upstream_model
                )
                started = time.perf_counter()
                try:
                    stream = adapter.stream(route.config, op.request)
                    iterator = iter(stream)
                    try:
                        first = next(iterator)
                    except StopIteration:
                        first = None
                        self._exhausted = True
                except ProviderError as exc:
                    op.failed(route=route, breaker=breaker, exc=exc, started=started, span=span)
                    continue
                self._ttft_s = time.perf_counter() - started
                op.upstream_ms += self._ttft_s * 1000
                op._done = True
                self._route, self._reservation, self._breaker, self._span, self._started = (
                    route,
                    reservation,
                    breaker,
                    span,
                    started,
                )
                self._stream, self._iterator, self._first = stream, iterator, first
                self.event_id = uuid.uuid4().hex
                return self
            raise op.final_error()
        except BaseException:
            metrics.IN_FLIGHT.labels(op.ctx.tenant.slug).dec()
            raise

    def __iter__(self) -> Iterator[str]:
        finished = False
        try:
            if self._first is not None:
                yield self._first
            if not self._exhausted:
                yield from self._iterator
            finished = True
            self._finish(UsageEvent.Status.OK)
        except ProviderError as exc:
            finished = True
            if exc.retryable:
                self._breaker.failure()
            self.error = _from_provider(exc)
            self._finish(UsageEvent.Status.ERROR, error=exc)
        finally:
            if not finished:
                # GeneratorExit: the client went away mid-stream.
                try:
                    self._stream.close()
                except Exception:  # closing a half-read upstream may fail; the event matters more
                    logger.debug("closing an abandoned upstream stream failed", exc_info=True)
                self._finish(UsageEvent.Status.CANCELLED)

    def abandon(self) -> None:
        """Called when the response is closed: a stream whose body was never iterated (client
        gone before the first byte) still releases its reservation and is recorded."""
        if not self._finished:
            try:
                self._stream.close()
            except Exception:  # closing a half-read upstream may fail; the event matters more
                logger.debug("closing an abandoned upstream stream failed", exc_info=True)
            self._finish(UsageEvent.Status.CANCELLED)

    def _finish(self, status: str, error: ProviderError | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        op, stream, route = self.op, self._stream, self._route
        try:
            if status == UsageEvent.Status.OK:
                self._breaker.success()
            usage = stream.usage
            estimated = usage is None or status != UsageEvent.Status.OK
            if estimated:
                base = usage or Usage(input_tokens=op.prompt_estimate)
                usage = with_estimate(
                    base, output_tokens=estimate_tokens(stream.delivered_text) if stream.delivered_text else 0
                )
            priced = op.price(route, stream.served_model, usage, estimated=estimated)
            op.settle(self._reservation, priced)
            op.record(
                route=route,
                status=status,
                event_id=self.event_id,
                served_model=stream.served_model,
                usage=usage,
                priced=priced,
                started=self._started,
                ttft_s=self._ttft_s,
                error_type=f"{error.kind}:{error.status}"
                if error
                else ("client_disconnected" if status == UsageEvent.Status.CANCELLED else ""),
                span=self._span,
                finish_reason=stream.finish_reason,
                completion=stream.delivered_text,
            )
            self.outcome = Outcome(
                event_id=self.event_id,
                operation_id=op.operation_id,
                route_alias=route.alias,
                provider=route.config.provider,
                served_model=stream.served_model,
                text=stream.delivered_text,
                finish_reason=stream.finish_reason,
                usage=usage,
                priced=priced,
            )
        finally:
            metrics.IN_FLIGHT.labels(op.ctx.tenant.slug).dec()


def stream(*, ctx: CallContext, alias: str, request: ChatRequest, require_chat: bool = False) -> StreamedCall:
    return StreamedCall(ctx=ctx, alias=alias, request=request, require_chat=require_chat).open()


def now() -> datetime:
    return timezone.now()
