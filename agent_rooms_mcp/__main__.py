"""`python -m agent_rooms_mcp`: the `agent-rooms` command."""

from agent_rooms_mcp.cli import main

main()
