"""Each woken run's way to the hub: the hub's MCP app on a Unix socket inside the run directory (DESIGN §5).

The supervisor opens one per run (`socket_bridge(hub)` is the `open_bridge` it is given) and closes it when
the run ends. The app is `serve --http`'s own (`http.mcp_app`: the same gate, error shapes and audit),
admitting that run's token alone; the socket file is 0600 in the 0700 run directory, so only the hub's OS
user reaches it, and it is the one socket a sandbox binds in. The woken CLI's MCP server is `agent-rooms
bridge`, which relays stdio to this socket holding only the run token (bridge.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import structlog
import uvicorn
from starlette.types import ASGIApp

from agent_rooms_mcp.bridge import SOCKET_ENV, TOKEN_FILE_ENV
from agent_rooms_mcp.http import mcp_app
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.ids import RunId
from agent_rooms_mcp.serving import Server, bounded_protocol
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.sockets import bind_private_unix
from agent_rooms_mcp.wake.supervisor import OpenBridge

log = structlog.get_logger("agent_rooms_mcp.wake")

SOCKET_NAME = "bridge.sock"


def socket_bridge(hub: Hub) -> OpenBridge:
    """The supervisor's `open_bridge` for runs spawned beside this hub."""

    @asynccontextmanager
    async def open_bridge(run_id: str, run_dir: Path, token_file: Path) -> AsyncIterator[dict[str, str]]:
        path = run_dir / SOCKET_NAME
        async with (
            mcp_app(hub, only_run=RunId(run_id), transport="bridge") as app,
            _serve_unix(app, path, hub.settings.limits),
        ):
            yield {TOKEN_FILE_ENV: str(token_file), SOCKET_ENV: str(path), "AGENT_ROOMS_RUN_ID": run_id}

    return open_bridge


@asynccontextmanager
async def _serve_unix(app: ASGIApp, path: Path, limits: Limits) -> AsyncIterator[None]:
    sock = bind_private_unix(path, 16)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        http=bounded_protocol(limits),
        # A bridge still connected when its run ends (a long-poll in flight) must not hold up the run's end.
        timeout_graceful_shutdown=limits.bridge_close_s,
    )
    # Ours, not uvicorn's: a connection accepted as the bridge closes is closed too (serving.py). The hub's long
    # polls go on: this is one run's socket ending, not the hub.
    server = Server(config)
    try:
        async with anyio.create_task_group() as tg:
            # `_serve`, not `serve`: `serve` installs process-wide signal handlers, which one run's server
            # must not take from the hub's own (and would hand back in the wrong order with runs overlapping).
            tg.start_soon(server._serve, [sock])
            while not server.started:
                await anyio.sleep(0.01)
            try:
                yield
            finally:
                server.should_exit = True
    finally:
        sock.close()
        with suppress(FileNotFoundError):
            path.unlink()
        log.info("run.bridge_closed", socket=path.name)
