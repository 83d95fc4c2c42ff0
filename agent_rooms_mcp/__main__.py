"""`python -m agent_rooms_mcp`: the `agent-rooms` command."""

import sys

if sys.argv[1:2] == ["bridge"]:
    # A woken CLI's MCP server: dispatched before the CLI's imports, so the bridge process never loads
    # the store or the services (bridge.py).
    from agent_rooms_mcp.bridge import main as bridge

    sys.exit(bridge())

if sys.argv[1:2] == ["egress-relay"]:
    # A sandboxed CLI's command prefix (wake/relay.py): it runs ahead of every sandboxed wake's CLI, so it
    # loads nothing but the standard library before it execs the CLI.
    from agent_rooms_mcp.wake.relay import main as egress_relay

    sys.exit(egress_relay())

from agent_rooms_mcp.cli import main

main()
