"""The supervisor's egress proxy in a process of its own, as a test's stand-in for the supervisor:

    python -m tests.egress_process SOCKET HOST:PORT... [--chown UID]

prints `ready` once the socket accepts, logs JSON to stderr (what the tests read for leaks), and serves
until terminated. Limits come from AGENT_ROOMS_LIMIT_EGRESS_* like the hub's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.wake.egress import egress_proxy


async def main(args: list[str]) -> None:
    owner = None
    if "--chown" in args:
        at = args.index("--chown")
        owner = int(args[at + 1])
        del args[at : at + 2]
    path, allowed = Path(args[0]), [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in args[1:])]
    async with egress_proxy(path, allowed, Limits.from_env(os.environ)) as proxy:
        if owner is not None:
            os.chown(proxy.path, owner, owner)  # as the supervisor does for a run-as user
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    configure_logging(json=True)
    anyio.run(main, sys.argv[1:])
