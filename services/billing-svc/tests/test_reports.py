"""Attribution, bills and savings through gRPC and REST, against hand-computed figures.

The data set (tenant acme; globex's events must never show up):
  call-1, 2026-11-10 10:00  router-svc  gemini-2.5-flash   10,000 in (6,000 cached), 500 out
                                        -> 0.00263; naive 0.0375 (sonnet, no cache)
                            router-svc  claude-sonnet-4-6   5,000 in (4,000 cache write), 200
                                        out -> 0.021; naive 0.018
                            vision-svc  300 frames: 20 kept, 200 rate-dropped, 80 duplicates,
                                        258 tokens each -> 0; dedup 0.06192, fps 0.1548
                            agent-worker deepgram 90 s -> 0.01155, elevenlabs 1,000 chars
                                        -> 0.05, session 10 min -> 0.10
          2026-11-10 15:00  agent-worker elevenlabs 200 chars -> 0.01
  call-2, 2026-11-11 09:00  router-svc  gemini-2.5-flash-lite 2,000 in, 100 out -> 0.00024;
                                        naive 0.0075
                            kb-svc      voyage-3.5 10,000 tokens for 10 texts, 5 more cached
                                        -> 0.0006; cache saved 0.0003
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from parley.billing.v1 import billing_pb2
from parley_billing.testing import (
    BillingHarness,
    billing_stub,
    embedding_event,
    llm_event,
    session_event,
    stt_event,
    tenant_md,
    tts_event,
    vision_event,
)
from parley_runtime.testing import signed_as

pytestmark = pytest.mark.integration

D1 = dt.datetime(2026, 11, 10, 10, tzinfo=dt.UTC)
D1_LATE = dt.datetime(2026, 11, 10, 15, tzinfo=dt.UTC)
D2 = dt.datetime(2026, 11, 11, 9, tzinfo=dt.UTC)

TOTAL = 0.19602
NAIVE = 0.45217
LEVERS = {"dedup": 0.06192, "adaptive_fps": 0.1548, "caching": -0.00138,
          "routing": 0.04051, "embedding_cache": 0.0003}


def _ts(value: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


async def _seed(h: BillingHarness) -> None:
    acme = [
        llm_event("c1-llm-1", at=D1, session="call-1", model="gemini-2.5-flash",
                  input_tokens=10_000, cached=6_000, output_tokens=500),
        llm_event("c1-llm-2", at=D1, session="call-1", model="claude-sonnet-4-6",
                  input_tokens=5_000, cache_write=4_000, output_tokens=200, tier="premium"),
        vision_event("c1-vis", at=D1, session="call-1"),
        stt_event("c1-stt", at=D1, session="call-1", seconds=90.0),
        tts_event("c1-tts", at=D1, session="call-1", characters=1_000),
        session_event("c1-min", at=D1, session="call-1", minutes=10.0),
        tts_event("c1-tts-2", at=D1_LATE, session="call-1", characters=200),
        llm_event("c2-llm", at=D2, session="call-2", model="gemini-2.5-flash-lite",
                  input_tokens=2_000, output_tokens=100, tier="simple"),
        embedding_event("c2-emb", at=D2, session="call-2", tokens=10_000, cached_texts=5,
                        embedded_texts=10),
    ]
    async with billing_stub(h.port) as stub:
        r = await stub.IngestUsage(billing_pb2.IngestUsageRequest(events=acme),
                                   metadata=tenant_md("acme"))
        assert r.accepted == len(acme)
        await stub.IngestUsage(
            billing_pb2.IngestUsageRequest(events=[
                llm_event("g1", at=D1, session="call-1", input_tokens=10**6),
                tts_event("g2", at=D2, session="other")]),
            metadata=tenant_md("globex"))


def _rows(report: Any) -> dict[tuple[str, ...], tuple[float, int]]:
    return {tuple(r.keys): (r.cost_usd, r.events) for r in report.rows}


def _approx(value: Any) -> Any:
    return pytest.approx(value, abs=1e-9)


async def test_cost_report_by_each_dimension(billing: BillingHarness) -> None:
    await _seed(billing)
    async with billing_stub(billing.port) as stub:

        async def report(*dims: int, **kw: Any) -> Any:
            return await stub.GetCostReport(
                billing_pb2.GetCostReportRequest(group_by=list(dims), **kw),
                metadata=tenant_md("acme"))

        total = await report()
        assert total.total_usd == _approx(TOTAL)
        assert _rows(await report(billing_pb2.DIMENSION_DAY)) == {
            ("2026-11-10",): (_approx(0.19518), 7), ("2026-11-11",): (_approx(0.00084), 2)}
        assert _rows(await report(billing_pb2.DIMENSION_SESSION)) == {
            ("call-1",): (_approx(0.19518), 7), ("call-2",): (_approx(0.00084), 2)}
        assert _rows(await report(billing_pb2.DIMENSION_SERVICE)) == {
            ("agent-worker",): (_approx(0.17155), 4), ("kb-svc",): (_approx(0.0006), 1),
            ("router-svc",): (_approx(0.02387), 3), ("vision-svc",): (_approx(0.0), 1)}
        assert _rows(await report(billing_pb2.DIMENSION_MODEL)) == {
            ("claude-sonnet-4-6",): (_approx(0.021), 1),
            ("deepgram-nova-3",): (_approx(0.01155), 1),
            ("elevenlabs-flash-v2.5",): (_approx(0.06), 2),
            ("gemini-2.5-flash",): (_approx(0.00263), 2),
            ("gemini-2.5-flash-lite",): (_approx(0.00024), 1),
            ("livekit-agent-session",): (_approx(0.1), 1),
            ("voyage-3.5",): (_approx(0.0006), 1)}
        by_type = _rows(await report(billing_pb2.DIMENSION_USAGE_TYPE))
        assert by_type[("llm",)] == (_approx(0.02387), 3)
        assert by_type[("tts",)] == (_approx(0.06), 2)
        two = _rows(await report(billing_pb2.DIMENSION_SESSION, billing_pb2.DIMENSION_MODEL))
        assert two[("call-2", "voyage-3.5")] == (_approx(0.0006), 1)
        # Keys come in the order asked for.
        swapped = _rows(await report(billing_pb2.DIMENSION_MODEL, billing_pb2.DIMENSION_DAY))
        assert ("voyage-3.5", "2026-11-11") in swapped

        # Partial hours at both ends come from the ledger, whole hours from rollups.
        edge = await report(billing_pb2.DIMENSION_DAY,
                            **{"from": _ts(D1 + dt.timedelta(hours=1)),
                               "to": _ts(D2 + dt.timedelta(hours=1))})
        assert _rows(edge) == {("2026-11-10",): (_approx(0.01), 1),
                               ("2026-11-11",): (_approx(0.00084), 2)}
        inside = await report(**{"from": _ts(D1_LATE - dt.timedelta(minutes=1)),
                                 "to": _ts(D1_LATE + dt.timedelta(minutes=1))})
        assert inside.total_usd == _approx(0.01)
        whole = await report(**{"from": _ts(dt.datetime(2026, 11, 11, tzinfo=dt.UTC)),
                                "to": _ts(dt.datetime(2026, 11, 12, tzinfo=dt.UTC))})
        assert whole.total_usd == _approx(0.00084)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await report(**{"from": _ts(D2), "to": _ts(D1)})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await report(billing_pb2.DIMENSION_DAY, billing_pb2.DIMENSION_DAY)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # A bound near the end of time is refused with the allowed range (rounding it to
        # whole hours overflowed: INTERNAL), in both report RPCs and over REST.
        late = Timestamp(seconds=253402300000)  # 9999-12-31T23:46:40Z
        for call in (lambda: report(**{"from": late}),
                     lambda: stub.GetSavings(billing_pb2.GetSavingsRequest(**{"from": late}),
                                             metadata=tenant_md("acme"))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "bad period: from must be between 0001-01-02T00:00:00Z and " \
                "9999-12-31T00:00:00Z" in (err.value.details() or "")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{billing.http_port}") as http:
        for path in ("/v1/reports/cost", "/v1/reports/savings"):
            r = await http.get(path, params={"from": "9999-12-31T23:30:00Z"},
                               headers=_bearer("acme"))
            assert r.status_code == 400, r.text
            assert "from must be between" in r.text
        r = await http.get("/v1/sessions/a%00b/bill", headers=_bearer("acme"))
        assert r.status_code == 400 and "control character" in r.text, r.text


async def test_session_bill_lines_add_up(billing: BillingHarness) -> None:
    await _seed(billing)
    async with billing_stub(billing.port) as stub:
        bill = await stub.GetSessionBill(billing_pb2.GetSessionBillRequest(session_id="call-1"),
                                         metadata=tenant_md("acme"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSessionBill(billing_pb2.GetSessionBillRequest(session_id="nope"),
                                      metadata=tenant_md("acme"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # Ids ingest would refuse have no bill: INVALID_ARGUMENT, without echoing the value
        # (a NUL failed in the driver: INTERNAL; 20,000 characters overflowed the status
        # trailer: RESOURCE_EXHAUSTED).
        for bad in ("", "a\x00b", "has space", "x" * 20000):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetSessionBill(billing_pb2.GetSessionBillRequest(session_id=bad),
                                          metadata=tenant_md("acme"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad[:20]
            assert "session_id" in (err.value.details() or "")
            assert len(err.value.details() or "") < 200
        # globex's call-1 is globex's only.
        theirs = await stub.GetSessionBill(
            billing_pb2.GetSessionBillRequest(session_id="call-1"), metadata=tenant_md("globex"))
    lines = {(i.model_id, i.unit): (i.quantity, i.cost_usd) for i in bill.items}
    assert lines == {
        ("gemini-2.5-flash", "input_tokens"): (4000, _approx(0.0012)),
        ("gemini-2.5-flash", "cached_input_tokens"): (6000, _approx(0.00018)),
        ("gemini-2.5-flash", "output_tokens"): (500, _approx(0.00125)),
        ("claude-sonnet-4-6", "input_tokens"): (1000, _approx(0.003)),
        ("claude-sonnet-4-6", "cache_write_tokens"): (4000, _approx(0.015)),
        ("claude-sonnet-4-6", "output_tokens"): (200, _approx(0.003)),
        ("gemini-2.5-flash", "frames"): (20, _approx(0.0)),
        ("deepgram-nova-3", "seconds"): (90, _approx(0.01155)),
        ("elevenlabs-flash-v2.5", "characters"): (1200, _approx(0.06)),
        ("livekit-agent-session", "minutes"): (10, _approx(0.1)),
    }
    assert bill.total_usd == _approx(0.19518)
    assert sum(i.cost_usd for i in bill.items) == _approx(bill.total_usd)
    assert all(i.price_version for i in bill.items)
    assert bill.first_event_at.ToDatetime(dt.UTC) == D1
    assert bill.last_event_at.ToDatetime(dt.UTC) == D1_LATE
    s = bill.savings
    assert s.actual_usd == _approx(0.19518)
    assert s.naive_usd == _approx(0.0375 + 0.018 + 0.06192 + 0.1548 + 0.01155 + 0.06 + 0.1)
    assert {lv.lever: lv.saved_usd for lv in s.levers} == {
        "dedup": _approx(0.06192), "adaptive_fps": _approx(0.1548),
        "caching": _approx(0.00162 - 0.003), "routing": _approx(0.03325),
        "embedding_cache": _approx(0.0)}
    assert theirs.total_usd == _approx(0.30025)  # 1M flash input + 100 output


async def test_savings_by_lever_hand_computed(billing: BillingHarness) -> None:
    await _seed(billing)
    async with billing_stub(billing.port) as stub:
        s = (await stub.GetSavings(billing_pb2.GetSavingsRequest(),
                                   metadata=tenant_md("acme"))).savings
        day2 = (await stub.GetSavings(
            billing_pb2.GetSavingsRequest(**{"from": _ts(dt.datetime(2026, 11, 11,
                                                                     tzinfo=dt.UTC))}),
            metadata=tenant_md("acme"))).savings
    assert s.actual_usd == _approx(TOTAL)
    assert s.naive_usd == _approx(NAIVE)
    levers = {lv.lever: lv.saved_usd for lv in s.levers}
    assert levers == {k: _approx(v) for k, v in LEVERS.items()}
    assert s.naive_usd - s.actual_usd == _approx(sum(levers.values()))
    assert {lv.lever: lv.saved_usd for lv in day2.levers}["routing"] == _approx(0.00726)
    assert day2.naive_usd == _approx(0.0084)


def _bearer(tenant: str, service: str = "agent-worker") -> dict[str, str]:
    return {"authorization": f"Bearer {signed_as(service).token(tenant=tenant)}"}


async def test_rest_reports_json_and_csv(billing: BillingHarness) -> None:
    await _seed(billing)
    base = f"http://127.0.0.1:{billing.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        r = await http.get("/v1/reports/cost", params={"group_by": "day,model"},
                           headers=_bearer("acme"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["total_usd"] == _approx(TOTAL) and body["events"] == 9
        assert {"day": "2026-11-11", "model": "voyage-3.5", "cost_usd": _approx(0.0006),
                "events": 1} in body["rows"]

        r = await http.get("/v1/reports/cost", params={"group_by": "session", "format": "csv"},
                           headers=_bearer("acme"))
        assert r.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(r.text)))
        assert rows[0] == ["session", "cost_usd", "events"]
        assert {row[0]: (float(row[1]), int(row[2])) for row in rows[1:]} == {
            "call-1": (_approx(0.19518), 7), "call-2": (_approx(0.00084), 2)}

        r = await http.get("/v1/reports/savings", headers=_bearer("acme"))
        assert r.json()["levers"] == {k: _approx(v) for k, v in LEVERS.items()}
        r = await http.get("/v1/reports/savings", params={"format": "csv"},
                           headers=_bearer("acme"))
        assert "adaptive_fps,0.1548\n" in r.text and "caching,-0.00138\n" in r.text

        r = await http.get("/v1/sessions/call-1/bill", headers=_bearer("acme"))
        assert r.json()["total_usd"] == _approx(0.19518)
        r = await http.get("/v1/sessions/call-1/bill", params={"format": "csv"},
                           headers=_bearer("acme"))
        assert r.text.splitlines()[0].startswith("usage_type,service,model_id,quantity")

        r = await http.get("/v1/reports/cost", params={"from": "2026-11-10T11:00:00Z",
                                                      "to": "2026-11-11"},
                           headers=_bearer("acme"))
        assert r.json()["total_usd"] == _approx(0.01)

        # The tenant is the token's: globex sees only its own numbers.
        r = await http.get("/v1/reports/cost", headers=_bearer("globex"))
        assert r.json()["events"] == 2

        # Errors are clear statuses.
        assert (await http.get("/v1/reports/cost")).status_code == 401
        r = await http.get("/v1/reports/cost",
                           headers={**_bearer("acme"), "x-parley-tenant-id": "globex"})
        assert r.status_code == 403
        r = await http.get("/v1/reports/cost", params={"group_by": "planet"},
                           headers=_bearer("acme"))
        assert r.status_code == 400 and "planet" in r.json()["error"]
        r = await http.get("/v1/reports/cost", params={"from": "yesterday"},
                           headers=_bearer("acme"))
        assert r.status_code == 400
        assert (await http.get("/v1/sessions/nope/bill", headers=_bearer("acme"))).status_code \
            == 404
        no_tenant = {"authorization": f"Bearer {signed_as('agent-worker').token(tenant=None)}"}
        assert (await http.get("/v1/reports/cost", headers=no_tenant)).status_code == 403


async def test_page_links_are_short_lived_read_only_and_tenant_bound(
    billing: BillingHarness,
) -> None:
    await _seed(billing)
    base = f"http://127.0.0.1:{billing.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        assert (await http.post("/v1/page-links")).status_code == 401
        r = await http.post("/v1/page-links", headers=_bearer("acme"))
        assert r.status_code == 200
        link = r.json()
        token = link["url"].split("token=", 1)[1]
        expires = dt.datetime.fromisoformat(link["expires_at"])
        assert dt.timedelta(0) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=15)
        # The page token reads reports...
        r = await http.get("/v1/reports/cost", params={"token": token})
        assert r.status_code == 200 and r.json()["tenant"] == "acme"
        # ...but cannot mint links, and a tampered one is refused.
        assert (await http.post("/v1/page-links", params={"token": token})).status_code == 401
        r = await http.get("/v1/dashboard", params={"token": token[:-2] + "xx"})
        assert r.status_code == 401 and "text/html" in r.headers["content-type"]
    # A page token is not a service token: gRPC refuses it.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{billing.port}") as ch:
        call = ch.unary_unary(
            "/parley.billing.v1.BillingService/GetSavings",
            request_serializer=billing_pb2.GetSavingsRequest.SerializeToString,
            response_deserializer=billing_pb2.GetSavingsResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(billing_pb2.GetSavingsRequest(),
                       metadata=(("authorization", f"Bearer {token}"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_session_id_with_a_slash_has_a_rest_bill(billing: BillingHarness) -> None:
    """Session ids are any printable ASCII, "/" included (a room path): its bill is reachable
    over REST whether the slash is sent raw or as %2F."""
    async with billing_stub(billing.port) as stub:
        r = await stub.IngestUsage(billing_pb2.IngestUsageRequest(events=[
            tts_event("slash-1", at=D1, session="room/abc", characters=1_000)]),
            metadata=tenant_md("acme"))
        assert r.accepted == 1
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{billing.http_port}",
                                 timeout=10) as http:
        for path in ("/v1/sessions/room/abc/bill", "/v1/sessions/room%2Fabc/bill"):
            r = await http.get(path, headers=_bearer("acme"))
            assert r.status_code == 200, (path, r.text)
            assert r.json()["session_id"] == "room/abc" and r.json()["total_usd"] > 0
        assert (await http.get("/v1/sessions/room/nope/bill",
                               headers=_bearer("acme"))).status_code == 404


async def test_a_path_with_control_characters_or_bad_utf8_is_refused(
    billing: BillingHarness,
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{billing.http_port}",
                                 timeout=10) as http:
        for path in ("/v1/sessions/call-1%0A/bill", "/v1/sessions/call%FF/bill"):
            r = await http.get(path, headers=_bearer("acme"))
            assert r.status_code == 400, (path, r.text)
            assert r.json()["code"] == "INVALID_ARGUMENT"


async def test_framework_errors_have_the_apis_error_shape(billing: BillingHarness) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{billing.http_port}",
                                 timeout=10) as http:
        for params in ({"format": "xml"}, {"days": "0"}):
            path = "/v1/reports/cost" if "format" in params else "/v1/dashboard"
            r = await http.get(path, params=params, headers=_bearer("acme"))
            assert r.status_code == 400, r.text
            if path != "/v1/dashboard":
                assert r.json()["code"] == "INVALID_ARGUMENT" and "format" in r.json()["error"]
        r = await http.get("/v1/nowhere", headers=_bearer("acme"))
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
        r = await http.patch("/v1/budget", headers=_bearer("acme"))
        assert r.status_code == 405 and r.json()["code"] == "METHOD_NOT_ALLOWED"
