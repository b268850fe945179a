"""The whole platform, for real, on one machine: the LiveKit server in dev mode, all five
services, PostgreSQL + pgvector, Redis and the provider emulator, driven by simulated
participants (the livekit rtc SDK) in real rooms.
"""

from __future__ import annotations

import pytest
from parley_demo.scenario import DEMO_TENANTS, Platform, collect_bill, run_session
from parley_devstack.stack import Stack
from parley_runtime import context
from parley_runtime.catalog import load_catalog

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


async def test_two_tenants_talk_share_screens_and_are_billed(platform: Stack) -> None:
    p = Platform(platform)
    try:
        for script in DEMO_TENANTS:
            context.tenant_id_var.set(script.tenant_id)
            results = await p.ingest(script.tenant_id, script.documents)
            assert all(r.chunks > 0 for r in results)

        # Each tenant's KB answers only with its own documents.
        acme_hits = await p.search("acme", "new laptop every how many months")
        globex_hits = await p.search("globex", "new laptop every how many months")
        assert acme_hits.hits and all(h.document_id.startswith("acme-") for h in acme_hits.hits)
        assert globex_hits.hits and all(
            h.document_id.startswith("globex-") for h in globex_hits.hits
        )

        catalog = load_catalog()
        primaries = tuple(chain[0] for chain in catalog.default_tiers.values())
        acme_script, globex_script = DEMO_TENANTS
        acme = await run_session(
            p, acme_script, fail_primary_after_turn=2, primary_models=primaries
        )
        globex = await run_session(p, globex_script)

        # The agent's answers use facts only the tenant's own KB holds.
        first = acme.turns[0]
        assert "30 months" in first.answer, first
        assert acme.turns[2].ok, acme.turns[2]
        assert "48 months" in globex.turns[0].answer
        # Nothing of acme's reaches globex, asking the same question.
        for turn in globex.turns:
            low = turn.answer.lower()
            assert "30 months" not in low and "compass" not in low and "foundry" not in low
        # Killing the primary provider mid-session did not break the conversation.
        assert acme.turns[2].answer and acme.turns[2].fallback, acme.turns[2]
        # The agent's audio track arrived and carried speech.
        assert acme.agent_audio_tracks >= 1
        assert acme.agent_voiced_s > 0.5

        for report, script in ((acme, acme_script), (globex, globex_script)):
            await collect_bill(p, report)
            v = report.vision
            assert v["frames_seen"] > 0
            # Most frames dropped, every slide change kept (each shown slide kept at least once).
            assert (v["dropped_rate"] + v["dropped_duplicate"]) / v["frames_seen"] >= 0.8, v
            shown = 1 + len({t.slide for t in script.turns if t.slide is not None})
            assert v["kept"] >= shown, v
            # Billing has the session, priced, with savings measured from its events.
            bill = report.bill
            assert bill and bill["total_usd"] > 0, bill
            kinds = {i["usage_type"] for i in bill["items"]}
            assert {"llm", "vision", "session"} <= kinds, kinds
            assert all(i["price_version"] for i in bill["items"])
            assert bill["savings"]["naive_usd"] > bill["savings"]["actual_usd"]
            assert bill["savings"]["levers"].get("dedup", 0) > 0 or bill["savings"][
                "levers"
            ].get("adaptive_fps", 0) > 0
    finally:
        await p.aclose()
