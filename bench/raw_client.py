"""A thin HTTP/1.1 keep-alive client that replays pre-built MCP requests (no SDK on the client side).

The SDK client costs more CPU per call than the server it drives, so on a 2-core box it would
measure itself. This one sends bytes built once, reads one Content-Length response, and checks it
cheaply: HTTP 200, a JSON-RPC result, and no `"isError":true`.

The request shape is what `mcp.Client(streamable_http_client(...))` 2.3 sends in the 2026-07-28 era
(captured once from the SDK): one POST per call, no session, `MCP-Protocol-Version`, `Mcp-Method` and
`Mcp-Name` headers, and the protocol version, client info and capabilities in `params._meta`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

PROTOCOL = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL,
    "io.modelcontextprotocol/clientInfo": {"name": "agent-rooms-bench", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


class BadResponse(RuntimeError):
    pass


def tool_call(
    port: int, tool: str, arguments: dict[str, Any], *, request_id: int = 1, token: str | None = None
) -> bytes:
    """The bytes of one `tools/call` POST to http://127.0.0.1:port/mcp."""
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": META},
    }
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        "POST /mcp HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Accept: application/json, text/event-stream",
        "Content-Type: application/json",
        f"MCP-Protocol-Version: {PROTOCOL}",
        "Mcp-Method: tools/call",
        f"Mcp-Name: {tool}",
        f"Content-Length: {len(payload)}",
    ]
    if token is not None:
        headers.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + payload


def check(status: int, body: bytes) -> None:
    """Count a call only if it succeeded: 200, a JSON-RPC result, and not a tool error."""
    if status != 200 or b'"result":' not in body or b'"isError":true' in body:
        raise BadResponse(f"HTTP {status}: {body[:300]!r}")


class Connection:
    """One keep-alive connection; calls on it are sequential."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length is None:
            raise BadResponse(f"no Content-Length in {head[:300]!r}")
        return status, await self._reader.readexactly(length)

    async def call(self, request: bytes) -> bytes:
        status, body = await self.send(request)
        check(status, body)
        return body

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
