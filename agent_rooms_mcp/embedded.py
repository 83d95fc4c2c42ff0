"""The embedded supervisor (DESIGN §5): the supervisor a serving hub runs beside itself, over the local
wake book. The one place that hands a supervisor the store's book; the supervisor itself never sees a Hub."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from agent_rooms_mcp.book import this_host
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.services.runbook import LocalWakeBook
from agent_rooms_mcp.wake.supervisor import Local, Supervisor


def embedded_supervisor(hub: Hub) -> Supervisor:
    # Imported here: a run's socket serves http.py's app, and http.py starts this supervisor.
    from agent_rooms_mcp.run_socket import socket_bridge

    settings = hub.settings
    book = LocalWakeBook(
        hub.store,
        settings.wake,
        hub.accounts,
        holder="sup_" + secrets.token_hex(8),
        host=this_host(settings.wake.host_id),
    )
    local = Local(
        wake=settings.wake,
        home=settings.home,
        runs_dir=settings.runs_dir,
        run_logs_dir=settings.run_logs_dir,
        limits=settings.limits,
    )
    return Supervisor(book, local, socket_bridge(hub))


@asynccontextmanager
async def supervising(hub: Hub) -> AsyncIterator[Supervisor | None]:
    """Run the supervisor beside a serving hub, if this process should (DESIGN §5)."""
    if not hub.settings.wake.enabled:
        yield None
        return
    supervisor = embedded_supervisor(hub)
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        try:
            yield supervisor
        finally:
            tg.cancel_scope.cancel()
