"""What the hub serves over HTTP beside `/mcp` for people and their devices."""
