from agent_rooms_mcp.cli import main

main()
