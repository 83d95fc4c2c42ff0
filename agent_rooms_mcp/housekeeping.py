"""Periodic work a serving hub does beside its requests: the purge of what is past retention (DESIGN §6)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog

from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.hub import Hub

log = structlog.get_logger("agent_rooms_mcp.housekeeping")
# Who the serving hub's own purge is audited as: nobody asked for it.
SYSTEM = Actor("system", "purge")


@asynccontextmanager
async def housekeeping(hub: Hub) -> AsyncIterator[None]:
    """Purge `purge_first_s` after the hub starts, then every `purge_every_s`, while the block runs."""
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
            await anyio.sleep(limits.purge_every_s)

    async with anyio.create_task_group() as tg:
        tg.start_soon(purging)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
