"""The served app in-process, for a profiler: N calls of one tool through `open_http_app` as raw ASGI requests.

What `docs/flames/` was drawn from: the app `serve --http` serves (our bearer gate, the SDK's streamable HTTP app,
the tools, the store), called directly, without uvicorn and a socket in between, so a profile of it is the part
that is ours to cut. Logging is set up as `serve` sets it up; the supervisor is off (`AGENT_ROOMS_SUPERVISOR=0`),
so its background looks are not in the picture.

Usage: py-spy record -f flamegraph -o docs/flames/whoami.svg -- python bench/flames.py whoami 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from raw_client import META
from world import AGENT, ROOM, UNLIMITED_RATES, build_hub

TEXT = "hello from the agent-rooms bench, " + "x" * 30
ARGUMENTS: dict[str, dict[str, Any]] = {
    "whoami": {},
    "post_message": {"room": ROOM, "text": TEXT},
    "read_messages": {"room": ROOM, "limit": 20},
}


def _request(tool: str, token: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    params = {"name": tool, "arguments": ARGUMENTS[tool], "_meta": META}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).encode()
    headers = [
        (b"host", b"127.0.0.1:8765"),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-type", b"application/json"),
        (b"mcp-protocol-version", META["io.modelcontextprotocol/protocolVersion"].encode()),
        (b"mcp-method", b"tools/call"),
        (b"mcp-name", tool.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"authorization", f"Bearer {token}".encode()),
    ]
    return headers, body


async def _call(app: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/mcp", "raw_path": b"/mcp", "root_path": "", "query_string": b"", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8765), "state": {},
    }  # fmt: skip
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    answer = b"".join(m.get("body", b"") for m in sent[1:])
    if sent[0]["status"] != 200 or b'"isError":true' in answer:
        raise RuntimeError(f"HTTP {sent[0]['status']}: {answer[:300]!r}")


async def main(tool: str, calls: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="ar-bench-flames-"))
    tokens = await build_hub(home)
    os.environ.update({**UNLIMITED_RATES, "AGENT_ROOMS_HOME": str(home), "AGENT_ROOMS_SUPERVISOR": "0"})
    # Imported after the environment is set: Settings.from_env reads it.
    from agent_rooms_mcp.http import open_http_app
    from agent_rooms_mcp.logs import configure_logging
    from agent_rooms_mcp.settings import Settings

    configure_logging()
    async with open_http_app(Settings.from_env()) as app:
        for _ in range(25):  # a full page for read_messages
            await _call(app, *_request("post_message", tokens[AGENT]))
        request = _request(tool, tokens[AGENT])
        for _ in range(calls):
            await _call(app, *request)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tool", choices=sorted(ARGUMENTS))
    ap.add_argument("calls", type=int, nargs="?", default=3000)
    a = ap.parse_args()
    asyncio.run(main(a.tool, a.calls))
