#!/usr/bin/env sh
# Claude Code over HTTP, while `agent-rooms serve --http` (or `make run`) is running.
# The entry holds `${AGENT_ROOMS_TOKEN}` (single quotes: your shell leaves it alone), which Claude Code
# expands from its environment each time it connects; the token itself is never written into ~/.claude.json.
# `agent-rooms connect you-claude --client claude --http http://127.0.0.1:8765/mcp --apply` does the same.
claude mcp add --scope user --transport http agent-rooms http://127.0.0.1:8765/mcp \
  -H 'Authorization: Bearer ${AGENT_ROOMS_TOKEN}'
# In the shell that starts claude (a profile line, say):
export AGENT_ROOMS_TOKEN="$(cat "$HOME/.agent-rooms/tokens/you-claude.token")"
claude mcp list
