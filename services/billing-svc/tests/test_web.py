"""The tenant web page, rendered by Debian's headless Chromium: charts with the tenant's numbers.

Chromium loads the page through a signed page link, once to dump the DOM it built and once to
take a screenshot; the test reads the numbers out of the DOM and checks the charts' colours are
actually painted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import httpx
import pytest
from parley.billing.v1 import billing_pb2
from parley_billing.charts import LEVER_COLOR, PALETTE
from parley_billing.testing import (
    BillingHarness,
    billing_stub,
    llm_event,
    tenant_md,
    tts_event,
    vision_event,
)
from parley_runtime.testing import signed_as

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> str:
    """Debian's chromium, installed on first use (no browser downloads)."""
    if not Path(CHROMIUM).exists():
        if shutil.which("apt-get") is None:
            pytest.fail("chromium is missing and apt-get is not available to install it")
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                       check=True, capture_output=True, timeout=600, env=env)
    return CHROMIUM


async def chromium(url: str, profile: Path, *extra: str) -> bytes:
    args = [
        ensure_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *extra, url,
    ]
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL)
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0
    return out


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6) and body[12] == 0
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    prev = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        filt = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if filt == 1:
                line[i] = (line[i] + a) & 0xFF
            elif filt == 2:
                line[i] = (line[i] + b) & 0xFF
            elif filt == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        pixels += [tuple(line[i:i + 3]) for i in range(0, stride, channels)]  # type: ignore[misc]
        prev = line
    return width, height, pixels


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _attr_values(dom: str, cls: str, key: str, value_attr: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for tag in re.findall(rf'<rect class="{cls}"[^>]*>', dom):
        k = re.search(rf'{key}="([^"]+)"', tag)
        v = re.search(rf'{value_attr}="([^"]+)"', tag)
        assert k and v
        out[k.group(1)] = out.get(k.group(1), 0.0) + float(v.group(1))
    return out


async def _link(h: BillingHarness, tenant: str) -> str:
    token = signed_as("agent-worker").token(tenant=tenant)
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"http://127.0.0.1:{h.http_port}/v1/page-links",
                            headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200
    url = str(r.json()["url"])
    # relative without PARLEY_PUBLIC_URL: the caller's Host header never picks the link's host
    assert url.startswith("/v1/dashboard?token=")
    return f"http://127.0.0.1:{h.http_port}{url}"


async def test_page_links_only_from_this_services_own_key(billing: BillingHarness) -> None:
    """A page token is read access to a tenant's costs: only billing-svc's own key mints one,
    with billing-svc as issuer and no longer lifetime than the links it gives out."""
    import time

    import jwt
    from parley_billing.web import PAGE_AUDIENCE
    from parley_runtime.testing import TEST_KEYS

    base = f"http://127.0.0.1:{billing.http_port}/v1/budget?token="

    def page(kid: str, *, iss: str | None = "billing-svc", ttl: int = 600,
             iat: bool = True) -> str:
        now = int(time.time())
        claims: dict[str, object] = {"aud": PAGE_AUDIENCE, "tenant": "globex", "exp": now + ttl}
        if iss is not None:
            claims["iss"] = iss
        if iat:
            claims["iat"] = now
        return jwt.encode(claims, TEST_KEYS[kid], algorithm="HS256", headers={"kid": kid})

    async with httpx.AsyncClient(timeout=10) as http:
        good = await http.get(base + page("billing-svc"))
        assert good.status_code == 200 and good.json()["tenant"] == "globex"
        forged = {
            "another service's key": page("agent-worker"),
            "another key claiming billing": page("router-svc", iss="billing-svc"),
            "no issuer": page("billing-svc", iss=None),
            "another issuer": page("billing-svc", iss="agent-worker"),
            "a year long": page("billing-svc", ttl=365 * 86400),
            "no iat": page("billing-svc", iat=False),
        }
        for what, token in forged.items():
            r = await http.get(base + token)
            assert r.status_code == 401, what
        # the Host header does not choose where a minted link points
        bearer = signed_as("agent-worker").token(tenant="acme")
        r = await http.post(f"http://127.0.0.1:{billing.http_port}/v1/page-links",
                            headers={"authorization": f"Bearer {bearer}",
                                     "host": "attacker.example"})
        assert r.status_code == 200 and "attacker.example" not in r.json()["url"]


async def test_dashboard_renders_the_tenants_charts_in_chromium(
    billing: BillingHarness, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    day1, day3 = now - dt.timedelta(days=1), now - dt.timedelta(days=3)
    async with billing_stub(billing.port) as stub:
        await stub.IngestUsage(billing_pb2.IngestUsageRequest(events=[
            # 1M flash input, 100k output: 0.30 + 0.25 = 0.55 USD; naive 3 + 1.5 = 4.5
            llm_event("w1", at=day1, input_tokens=1_000_000, output_tokens=100_000),
            # 0.05 USD of speech on day 3
            tts_event("w2", at=day3, characters=1_000),
            # dedup 0.06192, adaptive FPS 0.1548
            vision_event("w3", at=day3),
        ]), metadata=tenant_md("acme"))
        await stub.IngestUsage(billing_pb2.IngestUsageRequest(events=[
            tts_event("g1", at=day1, characters=20_000)]), metadata=tenant_md("globex"))

    url = await _link(billing, "acme")
    dom = (await chromium(url, tmp_path / "p1", "--dump-dom")).decode()
    assert '<span id="tenant">acme</span>' in dom
    total = re.search(r'id="total-cost" data-usd="([0-9.]+)"', dom)
    assert total and float(total.group(1)) == pytest.approx(0.60)
    naive = re.search(r'id="naive-cost" data-usd="([0-9.]+)"', dom)
    assert naive and float(naive.group(1)) == pytest.approx(4.5 + 0.05 + 0.06192 + 0.1548)
    bars = _attr_values(dom, "bar", "data-day", "data-cost")
    assert bars == {day1.date().isoformat(): pytest.approx(0.55),
                    day3.date().isoformat(): pytest.approx(0.05)}
    levers = _attr_values(dom, "lever", "data-lever", "data-usd")
    assert levers["lever-dedup"] == pytest.approx(0.06192)
    assert levers["lever-adaptive_fps"] == pytest.approx(0.1548)
    assert levers["lever-routing"] == pytest.approx(4.5 - 0.55)
    assert levers["actual"] == pytest.approx(0.60)
    assert "globex" not in dom

    png = await chromium(url, tmp_path / "p2", "--screenshot=" + str(tmp_path / "page.png"),
                         "--window-size=900,1400")
    del png
    width, height, pixels = png_pixels((tmp_path / "page.png").read_bytes())
    assert (width, height) == (900, 1400)
    colours = Counter(pixels)
    # The LLM bar, the TTS bar and the lever bars are painted.
    assert colours[_rgb(PALETTE["llm"])] > 500
    assert colours[_rgb(PALETTE["tts"])] > 20
    assert colours[_rgb(LEVER_COLOR)] > 500

    # Another tenant's link shows that tenant's numbers only.
    other = (await chromium(await _link(billing, "globex"), tmp_path / "p3",
                            "--dump-dom")).decode()
    total = re.search(r'id="total-cost" data-usd="([0-9.]+)"', other)
    assert total and float(total.group(1)) == pytest.approx(1.0)
    assert '<span id="tenant">globex</span>' in other

    # A forged link renders an error page, not data.
    forged = (await chromium(url[:-3] + "abc", tmp_path / "p4", "--dump-dom")).decode()
    assert "401" in forged and "total-cost" not in forged
