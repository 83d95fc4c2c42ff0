"""The embedded supervisor (DESIGN §5): the supervisor a serving hub runs beside itself, over the local
wake book. The one place that hands a supervisor the store's book; the supervisor itself never sees a Hub."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from agent_rooms_mcp.book import this_host
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.services.runbook import LocalWakeBook
from agent_rooms_mcp.wake.supervisor import Local, OpenBridge, Supervisor


def _run_socket(hub: Hub) -> OpenBridge:
    """run_socket's bridge, imported at the first run spawned rather than at start: a run's socket serves
    http.py's app (and http.py starts this supervisor), so importing it up front loaded the whole HTTP stack,
    console templates included, into every stdio hub's cold start (DESIGN §11)."""

    @asynccontextmanager
    async def open_bridge(run_id: str, run_dir: Path, token_file: Path) -> AsyncIterator[dict[str, str]]:
        from agent_rooms_mcp.run_socket import socket_bridge

        async with socket_bridge(hub)(run_id, run_dir, token_file) as env:
            yield env

    return open_bridge


def embedded_supervisor(hub: Hub) -> Supervisor:
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
    return Supervisor(book, local, _run_socket(hub))


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
