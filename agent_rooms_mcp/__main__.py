"""`python -m agent_rooms_mcp`: the `agent-rooms` command."""

import sys

if sys.argv[1:2] == ["bridge"]:
    # A woken CLI's MCP server: dispatched before the CLI's imports, so the bridge process never loads
    # the store or the services (bridge.py).
    from agent_rooms_mcp.bridge import main as bridge

    sys.exit(bridge())

from agent_rooms_mcp.cli import main

main()
