"""The baseline: a bare SDK server with one `echo` tool, served the way `agent-rooms serve --http` serves ours.

Same SDK app (`streamable_http_app`, json_response=True, the SDK's default transport security, which
for 127.0.0.1 is DNS-rebinding protection for the loopback hosts), same uvicorn settings
(`log_config=None, access_log=False`, default loop and HTTP implementation), root logging at WARNING
as ours. No auth, no store, no audit, no structlog line.

`echo` is the baseline: async like our tools. `echo_sync` is the same tool written as a plain function,
which the SDK runs on a worker thread (anyio.to_thread); the research scripts measured that one, so it
is reported alongside, for reference: it costs one thread hop more than `echo`.

Served over stdio (`--stdio`) it is the cold-start baseline (bench/coldstart.py): `MCPServer.run("stdio")`, the
SDK's own way, importing nothing the stdio path does not need (uvicorn is imported for HTTP only).

Usage: python bench/echo_server.py PORT
       python bench/echo_server.py --stdio
"""

from __future__ import annotations

import sys

from mcp.server import MCPServer


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
