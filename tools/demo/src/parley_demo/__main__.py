"""`make demo`: the platform's main job on a fresh machine.

Starts the stack (PostgreSQL+pgvector, Redis, LiveKit, the provider emulator, five services),
ingests a small knowledge base for two tenants, runs a scripted voice + screen-share session per
tenant through the real LiveKit server, and prints the transcript, the tier that answered each
turn, frames seen/kept and each tenant's bill with savings by lever against the naive baseline.
Leaves reports/demo-transcript.md and reports/demo-report.json.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from parley_devstack.stack import ROOT, Stack, up
from parley_runtime import context
from parley_runtime.catalog import load_catalog

from .scenario import DEMO_TENANTS, Platform, SessionReport, collect_bill, report_json, run_session


def render(reports: list[SessionReport]) -> str:
    out = ["# Parley demo", ""]
    for r in reports:
        out += [f"## Tenant `{r.tenant_id}` (session `{r.session_id}`, room `{r.room}`)", ""]
        for t in r.turns:
            out.append(f"- **user** ({'voice' if t.spoken else 'chat'}): {t.question}")
            out.append(f"  - **agent** [{t.tier} / {t.model}{' / fallback' if t.fallback else ''}"
                       f"{' / +image' if t.images else ''}]: {t.answer}")
        v = r.vision
        if v:
            seen = max(1, v["frames_seen"])
            out += ["", f"Vision: {v['frames_seen']} frames seen, {v['kept']} kept, "
                    f"{v['dropped_rate']} dropped by rate, {v['dropped_duplicate']} as duplicates "
                    f"({100 * (1 - v['kept'] / seen):.1f}% dropped); image tokens sent "
                    f"{v['image_tokens_sent']} vs {v['naive_image_tokens']} naive."]
        b = r.bill
        if b:
            out += ["", f"Bill: **${b['total_usd']:.6f}**", "",
                    "| usage | service | model | quantity | cost USD |", "|---|---|---|---|---|"]
            for i in b["items"]:
                out.append(f"| {i['usage_type']} | {i['service']} | {i['model']} | "
                           f"{i['quantity']:.2f} {i['unit']} | {i['cost_usd']:.6f} |")
            s = b["savings"]
            out += ["", f"Naive baseline ${s['naive_usd']:.6f} vs actual ${s['actual_usd']:.6f}; "
                    "saved by lever: " + ", ".join(f"{k} ${v:.6f}" for k, v in
                                                   s["levers"].items())]
        if r.notes:
            out += ["", f"Note-taker: {r.notes[-1].get('summary', r.notes[-1])}"]
        out.append("")
    return "\n".join(out)


async def main() -> int:
    stack = Stack((ROOT / ".stack").resolve())
    await asyncio.to_thread(up, stack)
    p = Platform(stack)
    reports: list[SessionReport] = []
    try:
        print("\ningesting knowledge bases ...")
        for script in DEMO_TENANTS:
            context.tenant_id_var.set(script.tenant_id)
            res = await p.ingest(script.tenant_id, script.documents)
            print(f"  {script.tenant_id}: {len(res)} documents, {sum(r.chunks for r in res)} "
                  "chunks")
        primaries = tuple(c[0] for c in load_catalog().default_tiers.values())
        for i, script in enumerate(DEMO_TENANTS):
            print(f"\nsession for tenant {script.tenant_id} ...")
            report = await run_session(
                p, script, fail_primary_after_turn=2 if i == 0 else None,
                primary_models=primaries,
            )
            await collect_bill(p, report)
            reports.append(report)
    finally:
        await p.aclose()
    text = render(reports)
    print("\n" + text)
    out_dir = ROOT / "reports"
    out_dir.mkdir(exist_ok=True)
    Path(out_dir / "demo-transcript.md").write_text(text)
    Path(out_dir / "demo-report.json").write_text(report_json(reports))
    print(f"wrote {out_dir / 'demo-transcript.md'} and {out_dir / 'demo-report.json'}")
    print("the stack is still running: `make down` stops it")
    ok = all(t.ok for r in reports for t in r.turns)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
