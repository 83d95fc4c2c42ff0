"""Periodic work a serving hub does beside its requests: the purge of what is past retention (DESIGN §6), and
the sweep of OAuth leftovers (DESIGN §9.4)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog

from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.services import runs

log = structlog.get_logger("agent_rooms_mcp.housekeeping")
# Who the serving hub's own purge is audited as: nobody asked for it.
SYSTEM = Actor("system", "purge")
# Who ends the wakes that waited past their expiry, when no supervisor's recovery did first.
SETTLER = Actor("system", "settle")


@asynccontextmanager
async def housekeeping(hub: Hub) -> AsyncIterator[None]:
    """While the block runs: purge `purge_first_s` after the hub starts, then every `purge_every_s`; and every
    `settle_every_s`, end the wakes that waited past their expiry."""

    async def settling() -> None:
        # In every serving process, supervisor or not: a hub serving with its supervisor off would otherwise
        # leave queued wakes queued forever, and nobody would expire a listener's that never came (DESIGN §5).
        while True:
            try:
                if await hub.store.write(lambda c: runs.expire_waiting(c, hub.settings.wake, SETTLER, now_utc())):
                    hub.store.notify_changed()
            except Exception as e:  # as for the purge: the next look tries again
                log.warning("settle.failed", error=type(e).__name__)
            await anyio.sleep(hub.settings.wake.settle_every_s)

    async with anyio.create_task_group() as tg:
        tg.start_soon(settling)
        try:
            async with _purging(hub):
                yield
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def _purging(hub: Hub) -> AsyncIterator[None]:
    limits = hub.settings.limits
    if limits.purge_every_s <= 0:
        yield
        return

    async def purging() -> None:
        await anyio.sleep(limits.purge_first_s)
        while True:
            try:
                await hub.purge.run(SYSTEM)
            except Exception as e:  # a failed purge must not take the hub down; the next one tries again
                log.warning("purge.failed", error=type(e).__name__)
            try:
                # OAuth leftovers: expired requests and codes, spent grace pairs, stale clients (DESIGN §9.4).
                await hub.oauth.sweep()
            except Exception as e:
                log.warning("oauth.sweep_failed", error=type(e).__name__)
            await anyio.sleep(limits.purge_every_s)

    async with anyio.create_task_group() as tg:
        tg.start_soon(purging)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
