"""`agent-rooms token`: issue (shown once), list, and revoke one agent credential at a time."""

from __future__ import annotations

import click

from agent_rooms_mcp.cli.common import emit, emit_receipt, json_option, parse_duration, perform, table
from agent_rooms_mcp.models import IssuedToken, TokenList, TokenRevoked
from agent_rooms_mcp.owner_actions import TokenIssue, TokenListArgs, TokenRevoke


@click.group()
def token() -> None:
    """Bearer tokens, each bound to a passport the hub signed."""


@token.command("issue")
@click.argument("agent")
@click.option("--ttl", default="90d", show_default=True, help="Lifetime: 90s, 15m, 1h, 30d ...")
@json_option
def issue(agent: str, ttl: str, as_json: bool) -> None:
    """Issue a token for AGENT. It is printed once and never stored: keep it in a 0600 file.

    \b
    Example:
        agent-rooms token issue alice-claude --json
    """
    seconds = parse_duration(ttl)
    issued: IssuedToken = perform("token.issue", TokenIssue(agent=agent, ttl_s=seconds), as_json=as_json)
    if as_json:
        click.echo(issued.model_dump_json(include={"token", "token_id"}))
    else:
        click.echo(issued.token)
        click.echo(f"token_id {issued.token_id} for {issued.agent}, expires {issued.expires_at}", err=True)


@token.command("list")
@click.argument("agent", required=False)
@json_option
def list_(agent: str | None, as_json: bool) -> None:
    """List tokens (all, or AGENT's) as active, expired or revoked."""
    tokens: TokenList = perform("token.list", TokenListArgs(agent=agent), as_json=as_json)
    rows = [[t.token_id, t.agent, t.status, t.expires_at] for t in tokens.tokens]
    emit(tokens, as_json=as_json, text=lambda _: table(rows, ["TOKEN_ID", "AGENT", "STATUS", "EXPIRES_AT"]))


@token.command("revoke")
@click.argument("token_id")
@json_option
def revoke(token_id: str, as_json: bool) -> None:
    """Revoke one token; the agent's other tokens keep working. Effective on its next call; the receipt
    shows the token refused by the same lookup every call makes."""
    done: TokenRevoked = perform("token.revoke", TokenRevoke(token_id=token_id), as_json=as_json)
    emit_receipt(done, as_json=as_json)
