"""The model lanes' scheduling (app/reply_stream.py): priority, then the tenant that used the lane least.

Pure scheduling, no model: the jobs are plain functions; the first one holds the lane on an Event so that
the others are all waiting when the choice is made.
"""

from __future__ import annotations

import asyncio
import threading
import time

from app.reply_stream import Lane, lane_tenant


async def _pending(lane: Lane, n: int) -> None:
    """Yield to the loop (and the worker thread) until exactly `n` calls wait in the lane."""

    async def spin() -> None:
        while len(lane._pending) != n:
            await asyncio.sleep(0)

    await asyncio.wait_for(spin(), 10)


async def _submit(lane: Lane, tenant: object, name: str, order: list[str], priority: int = Lane.URGENT):
    lane_tenant.set(tenant)  # (each task has its own context copy)

    def job() -> None:
        order.append(name)
        time.sleep(0.01)  # the work itself: a flood tenant accumulates usage

    await lane.run(job, priority=priority)


async def test_a_flooding_tenant_waits_behind_everyone_elses_next_call():
    lane, order = Lane("test"), []
    flood, other = object(), object()
    gate = threading.Event()
    lane_tenant.set(flood)
    first = asyncio.ensure_future(lane.run(gate.wait))
    await _pending(lane, 0)  # the flood's first call is running
    floods = [asyncio.create_task(_submit(lane, flood, f"flood{i}", order)) for i in range(5)]
    await _pending(lane, 5)  # the flood's calls are queued first...
    quiet = asyncio.create_task(_submit(lane, other, "other", order))
    await _pending(lane, 6)  # ...and the other tenant's one call after them
    gate.set()
    await asyncio.gather(first, *floods, quiet)
    assert order[0] == "other", order  # it waited for the running call only, not for the five queued


async def test_background_prefill_yields_to_urgent_calls():
    lane, order = Lane("test"), []
    tenant = object()
    gate = threading.Event()
    first = asyncio.ensure_future(lane.run(gate.wait))
    await _pending(lane, 0)
    background = [
        asyncio.create_task(_submit(lane, tenant, f"chunk{i}", order, Lane.BACKGROUND)) for i in range(3)
    ]
    await _pending(lane, 3)
    urgent = asyncio.create_task(_submit(lane, tenant, "reply-step", order))
    await _pending(lane, 4)
    gate.set()
    await asyncio.gather(first, *background, urgent)
    assert order == ["reply-step", "chunk0", "chunk1", "chunk2"]
