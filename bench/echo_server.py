"""The baseline: a bare SDK server with one `echo` tool, served the way `agent-rooms serve --http` serves ours.

Same SDK app (`streamable_http_app`, json_response=True, the SDK's default transport security, which
for 127.0.0.1 is DNS-rebinding protection for the loopback hosts), same uvicorn settings
(`log_config=None, access_log=False`, default loop and HTTP implementation), root logging at WARNING
as ours. No auth, no store, no audit, no structlog line.

`echo` is the baseline: async like our tools. `echo_sync` is the same tool written as a plain function,
which the SDK runs on a worker thread (anyio.to_thread); the research scripts measured that one, so it
is reported alongside, for reference: it costs one thread hop more than `echo`.

`echo_page` answers with the page `read_messages` answers in the bench (20 messages of the bench's text, as
structured content and as its compact JSON text block), built once at start: what the SDK alone spends to send
that answer (its dumps and validation of the result, the JSON-RPC envelope's encoding), for reference beside
`read_messages`, whose answer is that size.

Served over stdio (`--stdio`) it is the cold-start baseline (bench/coldstart.py): `MCPServer.run("stdio")`, the
SDK's own way, importing nothing the stdio path does not need (uvicorn is imported for HTTP only).

Usage: python bench/echo_server.py PORT
       python bench/echo_server.py --stdio
"""

from __future__ import annotations

import json
import sys
from typing import Any

from mcp.server import MCPServer
from mcp.types import CallToolResult, TextContent

# The bench's message text (bench/run.py TEXT) and page size (READ_PAGE); the page as read_messages shows its
# reader's own messages: relation self, no mentions, no flags, no envelope.
TEXT = "hello from the agent-rooms bench, " + "x" * 30
PAGE: dict[str, Any] = {
    "messages": [
        {
            "message_id": f"msg_{seq:022d}",
            "seq": seq,
            "author": {"handle": "alice-claude", "owner": "alice", "tool": "claude_code"},
            "relation": "self",
            "created_at": "2026-12-07T18:00:00.000000Z",
            "mentions": [],
            "reply_to": None,
            "text": TEXT,
            "flags": [],
        }
        for seq in range(6, 26)
    ],
    "next_after": 25,
    "has_more": False,
    "boundary": None,
    "notice": None,
}


def build() -> MCPServer:
    mcp = MCPServer("echo", log_level="WARNING")

    @mcp.tool()
    async def echo(text: str) -> str:
        """Echo text back."""
        return text

    @mcp.tool()
    def echo_sync(text: str) -> str:
        """Echo text back, from the SDK's worker thread (a sync tool), as in the research scripts."""
        return text

    page_text = json.dumps(PAGE, separators=(",", ":"))

    @mcp.tool()
    async def echo_page(text: str) -> CallToolResult:
        """Answer with a fixed page of 20 messages, as read_messages(20) answers."""
        return CallToolResult(content=[TextContent(type="text", text=page_text)], structured_content=PAGE)

    return mcp


def main() -> None:
    if sys.argv[1] == "--stdio":
        build().run("stdio")
        return
    import uvicorn

    port = int(sys.argv[1])
    app = build().streamable_http_app(json_response=True)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
