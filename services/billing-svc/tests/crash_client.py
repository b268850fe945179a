"""A client process for the crash test: records deterministic usage events through the durable
usage client until a stop file appears, then flushes and reports how many it recorded.

    python crash_client.py ADDR SPOOL_DIR CLIENT_ID STOP_FILE RATE_PER_S
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from parley_billing.testing import crash_event
from parley_runtime.testing import signed_as
from parley_runtime.usage import DUPLICATE_ACKS, DurableUsageRecorder, UsageClientSettings


async def main() -> None:
    addr, spool, client, stop_file, rate = sys.argv[1:6]
    settings = UsageClientSettings(billing_addr=addr, spool_dir=spool, backoff_base_s=0.05,
                                   backoff_max_s=0.5, rpc_timeout_s=5, linger_s=0.02,
                                   batch_max_events=500)
    rec = DurableUsageRecorder(service="router-svc", signer=signed_as("router-svc"),
                               settings=settings)
    per_tick = max(1, int(float(rate) / 50))
    sent = 0
    started = time.monotonic()
    while not Path(stop_file).exists():
        for _ in range(per_tick):
            tenant, event = crash_event(client, sent)
            rec.record(tenant, event)
            sent += 1
        await asyncio.sleep(0.02)
    flushed = await rec.flush(120)
    await rec.close()
    print(json.dumps({
        "client": client, "sent": sent, "flushed": flushed,
        "seconds": round(time.monotonic() - started, 1),
        "duplicate_acks": DUPLICATE_ACKS.labels("router-svc")._value.get(),
    }), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
