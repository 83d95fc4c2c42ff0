"""`agent-rooms init | quickstart | connect | serve`: the hub's own lifecycle and first run (DESIGN §9)."""

from __future__ import annotations

import getpass
import ipaddress
import re
import socket
from datetime import timedelta

import anyio
import click

from agent_rooms_mcp.cli import connect as snippets
from agent_rooms_mcp.cli.common import Failed, guarded, operator, run, settings
from agent_rooms_mcp.errors import ErrorCode
from agent_rooms_mcp.home import check_private_file, write_private_file
from agent_rooms_mcp.hub import Hub, check_home, init_home
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.principals import DEFAULT_SCOPES, AgentTool, format_scopes
from agent_rooms_mcp.settings import Settings


@click.command()
def init() -> None:
    """Create the hub's home (AGENT_ROOMS_HOME, default ~/.agent-rooms): database and issuer key. Idempotent."""
    s = settings()
    created = guarded(lambda: anyio.run(init_home, s, operator()))
    click.echo(f"{'initialised' if created else 'already initialised'}: {s.home}")


async def _ensure_token_file(hub: Hub, agent: str, *, new: bool) -> bool:
    """Mint a token into the agent's 0600 token file if it has none (or `new`); a replaced one is revoked."""
    path = snippets.token_file(hub.settings, agent)
    if path.exists():
        check_private_file(path)  # a file others can read would be refused by the server anyway
        if not new:
            return False
    issued = await hub.accounts.issue_token(
        operator(), agent, timedelta(seconds=hub.settings.limits.token_ttl_default_s)
    )
    if path.exists():
        # Nobody holds the old token once its file is overwritten: it must not stay valid.
        await hub.accounts.revoke_secret(operator(), path.read_text(encoding="ascii").strip())
    write_private_file(path, issued.token.encode("ascii") + b"\n")
    return True


def _os_handle() -> str:
    handle = re.sub(r"[^a-z0-9_-]+", "-", getpass.getuser().lower()).strip("-_") or "owner"
    return handle[:40]


@click.command()
def quickstart() -> None:
    """First run: on an empty home create an owner, an agent, a `lobby` room and a token file; then (every
    time, minting nothing new) print how to connect Claude Code."""
    s = settings()
    owner, agent = _os_handle(), f"{_os_handle()}-claude"

    async def main() -> str:
        await init_home(s, operator())
        async with Hub.open(s) as hub:
            owners = await hub.accounts.list_owners()
            if not owners.owners:
                # The person at this machine: the hub spawns their agents here (DESIGN §5).
                await hub.accounts.add_owner(operator(), owner, local=True)
                await hub.accounts.add_agent(operator(), agent, owner, AgentTool.CLAUDE, DEFAULT_SCOPES, None)
                await hub.rooms.create(operator(), "lobby", owner, [agent])
                await _ensure_token_file(hub, agent, new=False)
                scopes = format_scopes(DEFAULT_SCOPES)
                token_path = snippets.token_file(s, agent)
                click.echo(f"created owner {owner}, agent {agent} (scopes {scopes}), room lobby, token in {token_path}")
                return agent
            agents = await hub.accounts.list_agents()
            return agents.agents[0].handle if agents.agents else agent

    first = guarded(lambda: anyio.run(main))
    click.echo(f"hub home: {s.home}\n")
    click.echo(f"Connect Claude Code as {first} (stdio; starts the hub on demand):")
    click.echo(f"  {snippets.claude_stdio(s, first)}\n")
    click.echo("Or over HTTP, while `agent-rooms serve --http` runs:")
    click.echo(f"  {snippets.claude_http(s, first, snippets.DEFAULT_URL)}\n")
    click.echo("Add only one of the two: both register the server as `agent-rooms`.\n")
    click.echo(f"Next: `agent-rooms agent add NAME --owner {owner} --tool codex` for a second agent,")
    click.echo(
        f"`agent-rooms connect NAME --client codex` for its config, `agent-rooms invite create lobby --by {owner}`"
    )
    click.echo("to bring in another person.")


@click.command("connect")
@click.argument("agent")
@click.option("--client", type=click.Choice(["claude", "codex", "json"]), default="claude", show_default=True)
@click.option("--http", "url", default=None, help=f"Connect over HTTP to this URL (e.g. {snippets.DEFAULT_URL}).")
@click.option("--new-token", is_flag=True, help="Mint a fresh token into the agent's token file.")
def connect(agent: str, client: str, url: str | None, new_token: bool) -> None:
    """Print the exact `claude mcp add` command, Codex config.toml block, or .mcp.json entry for AGENT.

    \b
    Example:
        agent-rooms connect alice-claude --client claude
    """
    s = settings()

    async def main(hub: Hub) -> bool:
        await hub.accounts.list_tokens(agent)  # NOT_FOUND for an unknown agent, before any file is written
        return await _ensure_token_file(hub, agent, new=new_token)

    minted = run(main)
    if minted:
        click.echo(f"# token written to {snippets.token_file(s, agent)} (0600)", err=True)
    if client == "claude":
        click.echo(snippets.claude_http(s, agent, url) if url else snippets.claude_stdio(s, agent))
    elif client == "codex":
        click.echo(snippets.codex_toml(s, agent, url), nl=False)
    else:
        click.echo(snippets.mcp_json(s, agent, url))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--http", "use_http", is_flag=True, help="Serve streamable HTTP at /mcp instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535))
def serve(use_http: bool, host: str, port: int) -> None:
    """Serve MCP: stdio (what `claude mcp add … -- agent-rooms serve` launches) or HTTP with --http."""
    configure_logging()
    s: Settings = settings()
    # Refuse an unsafe or missing home here, with its fix, rather than after announcing a server.
    guarded(lambda: check_home(s))
    if not use_http:
        guarded(lambda: anyio.run(_serve_stdio, s))
        return
    if not _loopback(host):
        raise Failed(
            ErrorCode.INVALID_ARGUMENT.value,
            f"refusing to bind {host}: only loopback is supported until TLS and a public URL are configured",
            False,
        )
    import uvicorn

    from agent_rooms_mcp.http import HttpHub
    from agent_rooms_mcp.serving import bounded_protocol

    try:
        socket.create_server((host, port)).close()
    except OSError as e:
        raise Failed(ErrorCode.CONFLICT.value, f"cannot listen on {host}:{port}: {e.strerror}", False) from e

    click.echo(f"agent-rooms serving http://{host}:{port}/mcp (Ctrl-C to stop)", err=True)
    # Our protocol: uvicorn's h11 one with head and body timers and a connection cap (serving.py).
    config = uvicorn.Config(
        HttpHub(s),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=bounded_protocol(s.limits),
    )
    uvicorn.Server(config).run()


async def _serve_stdio(s: Settings) -> None:
    from agent_rooms_mcp.stdio import serve_stdio

    await serve_stdio(s)
