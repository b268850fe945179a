"""REST reports (JSON and CSV) and the per-tenant web page, served by FastAPI on port 8084.

Authentication:
- API calls send the same service JWT as gRPC: `Authorization: Bearer <JWT>`; the tenant is
  the token's `tenant` claim (an `X-Parley-Tenant-Id` header, if sent, must match it).
- Browsers cannot set headers on a link, so the page takes a short-lived *page token* in the
  query string: `GET /v1/dashboard?token=...`. Page tokens are HS256 JWTs with audience
  `parley-billing-page`, a `tenant` claim and an expiry (PARLEY_PAGE_LINK_TTL_S, default 15
  minutes). Get one with `POST /v1/page-links` (Bearer auth) or
  `python -m parley_billing page-link --tenant <id>`. A page token is read-only: it is
  accepted by the page and the GET report endpoints, never by gRPC (wrong audience).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from html import escape
from typing import Annotated, Any
from urllib.parse import quote

import jwt
import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from parley_runtime.asgi import RejectBadPaths
from parley_runtime.auth import ALGORITHM, TokenVerifier, key_owner
from parley_runtime.context import TENANT_HEADER
from parley_runtime.errors import (
    InvalidArgument,
    NotFound,
    ParleyError,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import charts
from .budgets import BudgetStatus
from .ledger import Ledger
from .log import logger
from .pricing import LEVERS
from .reports import Dimension, Period, Savings, SessionBill

PAGE_AUDIENCE = "parley-billing-page"
_HTTP_STATUS = {
    InvalidArgument: 400,
    Unauthenticated: 401,
    PermissionDenied: 403,
    NotFound: 404,
    Unavailable: 503,
}


class WebAuth:
    """Resolves the tenant of a REST call or page view."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier | None,
        keys: dict[str, str],
        page_kid: str | None,
        page_ttl_s: int,
        issuer: str = "billing-svc",
    ) -> None:
        self._verifier = verifier
        self._keys = dict(keys)
        self._page_kid = page_kid if page_kid in self._keys else None
        self._page_ttl_s = page_ttl_s
        self._issuer = issuer

    @property
    def disabled(self) -> bool:
        return self._verifier is None

    def tenant_from_bearer(self, request: Request) -> str:
        asked = request.headers.get(TENANT_HEADER)
        if self._verifier is None:
            tenant = asked or request.query_params.get("tenant")
            if not tenant:
                raise InvalidArgument("auth is disabled: name the tenant with X-Parley-Tenant-Id")
            return tenant
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("send 'Authorization: Bearer <service JWT>'")
        ident = self._verifier.verify(token.strip())
        if ident.tenant is None:
            raise PermissionDenied("the token names no tenant")
        if asked and asked != ident.tenant:
            raise PermissionDenied(f"tenant {asked!r} in the request differs from the token's")
        return ident.tenant

    def tenant_from_page_token(self, token: str) -> str:
        """The tenant of a page link this service minted: signed with one of billing's own keys
        (kid `<issuer>` or `<issuer>:<version>`), issued by it, and no longer-lived than the
        links it mints. Any other trusted key (another service's, an internal team's) cannot
        mint read access to a tenant's costs."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed page token") from None
        kid = header.get("kid")
        secret = self._keys.get(kid) if isinstance(kid, str) else None
        if (header.get("alg") != ALGORITHM or secret is None or not isinstance(kid, str)
                or key_owner(kid) != self._issuer):
            raise Unauthenticated("page token not signed by this service: ask for a new link")
        try:
            claims = jwt.decode(token, secret, algorithms=[ALGORITHM], audience=PAGE_AUDIENCE,
                                issuer=self._issuer,
                                options={"require": ["exp", "iat", "aud", "iss", "tenant"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("this page link has expired: ask for a new one") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid page token: {exc}") from None
        try:
            lifetime = float(claims["exp"]) - float(claims["iat"])
        except (TypeError, ValueError):
            raise Unauthenticated("invalid page token: bad exp or iat") from None
        if lifetime > self._page_ttl_s + 5:
            raise Unauthenticated("page token lives longer than this service's links: ask for a "
                                  "new one")
        return str(claims["tenant"])

    def page_token(self, tenant: str) -> tuple[str, dt.datetime]:
        """A fresh page token for `tenant`, valid for the configured TTL."""
        if self._verifier is None or self._page_kid is None:
            raise Unavailable(
                "page links need authentication and a signing key for this service "
                "(PARLEY_AUTH_KEYS with PARLEY_AUTH_KID)"
            )
        now = int(time.time())
        exp = now + self._page_ttl_s
        claims = {"iss": self._issuer, "sub": self._issuer, "aud": PAGE_AUDIENCE,
                  "tenant": tenant, "iat": now, "exp": exp}
        token = jwt.encode(claims, self._keys[self._page_kid], algorithm=ALGORITHM,
                           headers={"kid": self._page_kid})
        return token, dt.datetime.fromtimestamp(exp, dt.UTC)

    def tenant(self, request: Request) -> str:
        """Bearer header if present; else a page token in `?token=` (read-only routes)."""
        token = request.query_params.get("token")
        if token and "authorization" not in request.headers:
            if self._verifier is None:
                raise InvalidArgument("auth is disabled: page tokens are not issued")
            return self.tenant_from_page_token(token)
        return self.tenant_from_bearer(request)


def _parse_time(value: str | None, name: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        if len(value) == 10:
            d = dt.date.fromisoformat(value)
            return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{name} must be an ISO 8601 date or date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _period(start: str | None, end: str | None) -> Period:
    try:
        return Period(_parse_time(start, "from"), _parse_time(end, "to"))
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def _dims(group_by: str) -> list[Dimension]:
    out = []
    for name in filter(None, (p.strip() for p in group_by.split(","))):
        try:
            out.append(Dimension(name))
        except ValueError:
            valid = ", ".join(d.value for d in Dimension)
            raise InvalidArgument(f"unknown dimension {name!r}; use {valid}") from None
    return out


def _csv(rows: Sequence[Sequence[Any]], filename: str) -> Response:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow(row)
    return Response(
        buf.getvalue(), media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"',
                 "cache-control": "no-store"},
    )


def _num(value: Decimal) -> float:
    return float(value)


def _exact(value: Decimal) -> str:
    """Exact decimal text without trailing zeros (CSV keeps money exact)."""
    return format(value.normalize(), "f")


def savings_json(s: Savings) -> dict[str, Any]:
    return {
        "actual_usd": _num(s.actual_usd),
        "naive_usd": _num(s.naive_usd),
        "saved_usd": _num(s.saved_usd),
        "levers": {k: _num(v) for k, v in s.levers.items()},
    }


def bill_json(b: SessionBill) -> dict[str, Any]:
    return {
        "session_id": b.session_id,
        "total_usd": _num(b.total_usd),
        "events": b.events,
        "first_event_at": b.first_event_at.isoformat(),
        "last_event_at": b.last_event_at.isoformat(),
        "items": [
            {"usage_type": i.usage_type, "service": i.service, "model_id": i.model_id,
             "quantity": float(i.quantity), "unit": i.unit, "cost_usd": _num(i.cost_usd),
             "price_version": i.price_version}
            for i in b.items
        ],
        "savings": savings_json(b.savings),
    }


def budget_json(s: BudgetStatus) -> dict[str, Any]:
    b = s.budget
    return {
        "budget": None if b is None else {
            "monthly_limit_usd": _num(b.monthly_limit_usd),
            "soft_limit_ratio": b.soft_limit_ratio,
            "hard_limit": b.hard_limit,
            "source": b.source,
        },
        "spent_this_month_usd": _num(s.spent_usd),
        "state": s.state.value,
        "month": s.month.isoformat(),
    }


def _api_tenant(request: Request) -> str:
    auth: WebAuth = request.app.state.auth
    return auth.tenant_from_bearer(request)


def _read_tenant(request: Request) -> str:
    auth: WebAuth = request.app.state.auth
    return auth.tenant(request)


# Bearer service JWT only (writes, link minting).
ApiTenant = Annotated[str, Depends(_api_tenant)]
# Bearer service JWT, or a page token in ?token= (read-only routes).
ReadTenant = Annotated[str, Depends(_read_tenant)]
Fmt = Annotated[str, Query(pattern="^(json|csv)$")]


def create_app(
    ledger: Ledger, auth: WebAuth, *, public_url: Callable[[], str] | None = None
) -> FastAPI:
    app = FastAPI(title="Parley billing", version="1", docs_url="/docs", redoc_url=None)
    app.state.auth = auth

    @app.exception_handler(ParleyError)
    async def _parley_error(request: Request, exc: ParleyError) -> Response:
        status = next((code for cls, code in _HTTP_STATUS.items() if isinstance(exc, cls)), 500)
        if status >= 500 and not isinstance(exc, Unavailable):
            logger.error("request failed", extra={"path": request.url.path,
                                                  "error": exc.message})
        if request.url.path == "/v1/dashboard":
            return HTMLResponse(_error_page(status, exc.message), status_code=status)
        return JSONResponse({"error": exc.message, "code": exc.code.name}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own 422 echoes the input in a list: the same shape as every other error
        message = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'query')}: {err.get('msg')}"
            for err in exc.errors()
        )[:500]
        if request.url.path == "/v1/dashboard":
            return HTMLResponse(_error_page(400, message), status_code=400)
        return JSONResponse({"error": message, "code": "INVALID_ARGUMENT"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return JSONResponse({"error": str(exc.detail), "code": code},
                            status_code=exc.status_code, headers=exc.headers)

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    @app.get("/v1/reports/cost")
    async def cost_report(
        tenant: ReadTenant,
        start: Annotated[str | None, Query(alias="from")] = None,
        end: Annotated[str | None, Query(alias="to")] = None,
        group_by: str = "day",
        format: Fmt = "json",
    ) -> Response:
        dims = _dims(group_by)
        report = await ledger.cost_report(tenant, _period(start, end), dims)
        names = [d.value for d in dims]
        if format == "csv":
            rows: list[list[Any]] = [[*names, "cost_usd", "events"]]
            rows += [[*r.keys, _exact(r.cost_usd), r.events] for r in report.rows]
            return _csv(rows, f"cost-{tenant}.csv")
        return JSONResponse({
            "tenant": tenant, "from": start, "to": end, "group_by": names,
            "rows": [{**dict(zip(names, r.keys, strict=True)), "cost_usd": _num(r.cost_usd),
                      "events": r.events} for r in report.rows],
            "total_usd": _num(report.total_usd), "events": report.events,
        })

    @app.get("/v1/reports/savings")
    async def savings(
        tenant: ReadTenant,
        start: Annotated[str | None, Query(alias="from")] = None,
        end: Annotated[str | None, Query(alias="to")] = None,
        format: Fmt = "json",
    ) -> Response:
        s = await ledger.savings(tenant, _period(start, end))
        if format == "csv":
            rows: list[list[Any]] = [["lever", "saved_usd"]]
            rows += [[k, _exact(v)] for k, v in s.levers.items()]
            rows += [["actual", _exact(s.actual_usd)], ["naive", _exact(s.naive_usd)]]
            return _csv(rows, f"savings-{tenant}.csv")
        return JSONResponse({"tenant": tenant, "from": start, "to": end, **savings_json(s)})

    # `path`: session ids may hold a "/" (any printable ASCII), sent raw or as %2F
    @app.get("/v1/sessions/{session_id:path}/bill")
    async def session_bill(tenant: ReadTenant, session_id: str, format: Fmt = "json") -> Response:
        bill = await ledger.session_bill(tenant, session_id)
        if format == "csv":
            rows: list[list[Any]] = [["usage_type", "service", "model_id", "quantity", "unit",
                                      "cost_usd", "price_version"]]
            rows += [[i.usage_type, i.service, i.model_id, _exact(i.quantity), i.unit,
                      _exact(i.cost_usd), i.price_version] for i in bill.items]
            return _csv(rows, f"bill-{session_id}.csv")
        return JSONResponse({"tenant": tenant, **bill_json(bill)})

    @app.get("/v1/budget")
    async def budget(tenant: ReadTenant) -> Response:
        return JSONResponse({"tenant": tenant, **budget_json(await ledger.get_budget(tenant))})

    @app.post("/v1/page-links")
    async def page_link(tenant: ApiTenant, request: Request) -> Response:
        ledger.check_tenant(tenant)
        token, expires = auth.page_token(tenant)
        # Without PARLEY_PUBLIC_URL the link is relative to where it was asked for: the
        # request's Host header is the caller's to choose, and a link (with its token) must not
        # point at a host someone else picked.
        base = public_url() if public_url else ""
        return JSONResponse({"url": f"{base}/v1/dashboard?token={token}",
                             "expires_at": expires.isoformat()})

    @app.get("/v1/dashboard", response_class=HTMLResponse)
    async def dashboard(
        request: Request, tenant: ReadTenant, days: Annotated[int, Query(ge=1, le=366)] = 30
    ) -> Response:
        today = dt.datetime.now(dt.UTC).date()
        start = dt.datetime.combine(today - dt.timedelta(days=days - 1), dt.time(), dt.UTC)
        period = Period(start, start + dt.timedelta(days=days))
        report, s, status = await asyncio.gather(
            ledger.cost_report(tenant, period, [Dimension.DAY, Dimension.USAGE_TYPE]),
            ledger.savings(tenant, period),
            ledger.check_budget(tenant),
        )
        html = render_dashboard(tenant, period, days, report.rows, s, status,
                                token=request.query_params.get("token", ""))
        return HTMLResponse(html, headers={"cache-control": "no-store",
                                           "referrer-policy": "no-referrer"})

    # ids in the path (a session id) are checked on the raw bytes (parley_runtime.asgi)
    app.add_middleware(
        RejectBadPaths, body=lambda message: {"error": message, "code": "INVALID_ARGUMENT"}
    )
    return app


def render_dashboard(
    tenant: str,
    period: Period,
    days: int,
    rows: Sequence[Any],
    s: Savings,
    status: BudgetStatus,
    *,
    token: str = "",
) -> str:
    assert period.start is not None
    labels = [(period.start.date() + dt.timedelta(days=i)).isoformat() for i in range(days)]
    index = {d: i for i, d in enumerate(labels)}
    # Usage types that cost something in the period (vision's own cost is always 0).
    kinds = sorted({r.keys[1] for r in rows if r.cost_usd}, key=lambda k: list(
        charts.PALETTE).index(k) if k in charts.PALETTE else 99)
    series = {k: [0.0] * days for k in kinds}
    total = Decimal(0)
    for r in rows:
        day, kind = r.keys
        if day in index and kind in series:
            series[kind][index[day]] += float(r.cost_usd)
        total += r.cost_usd
    saved = s.saved_usd
    pct = float(saved / s.naive_usd * 100) if s.naive_usd else 0.0
    lever_rows = "".join(
        f'<tr><td>{escape(k)}</td><td class="num" data-lever="{escape(k)}">'
        f"{escape(charts.usd(float(v)))}</td></tr>"
        for k, v in s.levers.items()
    )
    span = f"from={labels[0]}&to={(period.end or period.start).date().isoformat()}"
    auth = f"&token={quote(token)}" if token else ""
    exports = {
        "day": f"/v1/reports/cost?{span}&group_by=day,model&format=csv{auth}",
        "session": f"/v1/reports/cost?{span}&group_by=session&format=csv{auth}",
        "savings": f"/v1/reports/savings?{span}&format=csv{auth}",
    }
    budget = status.budget
    budget_line = (
        "no monthly budget set" if budget is None else
        f"{charts.usd(float(status.spent_usd))} of {charts.usd(float(budget.monthly_limit_usd))}"
        f" this month ({status.state.value.replace('_', ' ')})"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Parley cost - {escape(tenant)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 800px; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 28px; }}
.kpi {{ display: inline-block; margin-right: 28px; }}
.kpi b {{ display: block; font-size: 22px; }}
table {{ border-collapse: collapse; }} td {{ padding: 2px 12px 2px 0; }}
.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style></head>
<body data-tenant="{escape(tenant)}">
<h1>Usage cost for <span id="tenant">{escape(tenant)}</span></h1>
<p>{escape(labels[0])} to {escape(labels[-1])} (UTC), last {days} days.
Budget: <span id="budget">{escape(budget_line)}</span></p>
<div>
{_kpi("Cost", "total-cost", total)}
{_kpi("Naive baseline", "naive-cost", s.naive_usd)}
{_kpi("Saved", "saved", saved, f" ({pct:.1f}%)")}
</div>
<h2>Cost over time</h2>
{charts.cost_over_time(labels, series)}
<h2>Savings by lever</h2>
{charts.savings_by_lever(float(s.actual_usd), float(s.naive_usd),
                         {k: float(v) for k, v in s.levers.items()})}
<table id="levers"><tbody>{lever_rows}</tbody></table>
<p>Export (CSV): <a href="{escape(exports["day"])}">cost by day and model</a>,
<a href="{escape(exports["session"])}">cost by session</a>,
<a href="{escape(exports["savings"])}">savings by lever</a>.</p>
<p style="color:#666;font-size:12px">Naive baseline: the same recorded usage with every turn on
the premium model, no prompt cache, every video frame at the source frame rate and no embedding
cache. Levers: {", ".join(LEVERS)}.</p>
</body></html>
"""


def _kpi(label: str, element_id: str, value: Decimal, suffix: str = "") -> str:
    return (f'<span class="kpi">{escape(label)}<b id="{element_id}" '
            f'data-usd="{float(value):.6f}">{escape(charts.usd(float(value)) + suffix)}</b></span>')


def _error_page(status: int, message: str) -> str:
    return (f"<!doctype html><html><head><title>{status}</title></head><body>"
            f"<h1>{status}</h1><p>{escape(message)}</p></body></html>")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our process: the gRPC host owns the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                lifespan="off", timeout_graceful_shutdown=5)
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    async def start(self) -> int:
        self._task = asyncio.get_running_loop().create_task(self._server.serve())
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("HTTP server exited during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError("HTTP server did not start")
            await asyncio.sleep(0.02)
        logger.info("http server listening", extra={"port": self.port})
        return self.port

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
