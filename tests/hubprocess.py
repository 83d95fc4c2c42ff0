"""A real `agent-rooms serve --http` process on a home of its own, started and awaited one way for every test
that needs one (DESIGN §9: the process `make run` and an operator start)."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio
import anyio.abc

CLI = [sys.executable, "-m", "agent_rooms_mcp"]
# Generous: only to end a hang. A loaded box takes seconds to import the server.
START_DEADLINE_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, process: anyio.abc.Process | None = None, output: IO[bytes] | None = None) -> None:
    """Until something accepts on `port`. A server that exits first fails at once with what it printed,
    rather than at the deadline with nothing to go on.

    With the server's `output`, until it has also said it serves: `free_port` only found a port free a moment
    ago, and another test's server may have taken it since; ours then refuses to start (CONFLICT), and without
    this check the test would go on talking to that other hub."""
    while True:
        # pread: the server writes through the same open file, and moving its offset would have it overwrite.
        said = b"" if output is None else os.pread(output.fileno(), 1 << 20, 0)
        if process is not None and process.returncode is not None:
            raise AssertionError(f"serve exited with {process.returncode} before listening:\n{said.decode()}")
        if output is not None and b"agent-rooms serving" not in said:
            await anyio.sleep(0.05)
            continue
        try:
            stream = await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            await anyio.sleep(0.05)  # the server is still importing; nothing else to wait on
            continue
        await stream.aclose()
        return


@dataclass(frozen=True)
class Served:
    port: int
    process: anyio.abc.Process
    base: str  # "http://127.0.0.1:PORT", or the host and scheme the caller asked for

    @property
    def mcp(self) -> str:
        return f"{self.base}/mcp"


@asynccontextmanager
async def serve_http(
    home: Path,
    *flags: str,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    base: str = "http://127.0.0.1",
    wrap: Sequence[str] = (),
) -> AsyncIterator[Served]:
    """`agent-rooms serve --http --port PORT FLAGS…` on `home`, listening when this yields, ended after.

    `env` adds to (or overrides) this process's environment; `port` is for flags that must name it in
    advance (a --public-url). The server's output goes to a file, not a pipe nobody reads: a chatty server
    would otherwise block on a full pipe. `wrap` is a command the server runs under (e.g. bwrap giving it an
    /etc/hosts of its own)."""
    port = free_port() if port is None else port
    argv = [*wrap, *CLI, "serve", "--http", "--port", str(port), *flags]
    full_env = {**os.environ, "AGENT_ROOMS_HOME": str(home), **(env or {})}
    with tempfile.TemporaryFile() as output:
        async with await anyio.open_process(argv, env=full_env, stdout=output, stderr=output) as server:
            try:
                with anyio.fail_after(START_DEADLINE_S):
                    await wait_listening(port, server, output)
                yield Served(port, server, f"{base}:{port}")
            finally:
                if server.returncode is None:
                    server.terminate()
                await server.wait()
