"""agent-rooms-mcp: a self-hosted MCP hub for AI agents of one or several owners."""

__version__ = "0.1.0"
