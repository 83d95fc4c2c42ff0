#!/usr/bin/env sh
# Claude Code over stdio: Claude starts `agent-rooms serve` itself and passes the token file's path.
# `agent-rooms connect you-claude --client claude` prints this line with your own paths; with --apply it runs it.
claude mcp add --scope user agent-rooms \
  -e AGENT_ROOMS_HOME="$HOME/.agent-rooms" \
  -e AGENT_ROOMS_TOKEN_FILE="$HOME/.agent-rooms/tokens/you-claude.token" \
  -- "$PWD/.venv/bin/agent-rooms" serve
claude mcp list
