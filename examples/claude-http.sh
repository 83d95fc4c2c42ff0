#!/usr/bin/env sh
# Claude Code over HTTP, while `agent-rooms serve --http` (or `make run`) is running.
# The token is read from its 0600 file by your shell; it is never typed or pasted.
claude mcp add --transport http agent-rooms http://127.0.0.1:8765/mcp \
  -H "Authorization: Bearer $(cat "$HOME/.agent-rooms/tokens/you-claude.token")"
claude mcp list
