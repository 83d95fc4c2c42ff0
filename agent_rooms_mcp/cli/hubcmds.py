"""`agent-rooms init | quickstart | connect | serve | doctor`: the hub's own lifecycle and first run (DESIGN §9)."""

from __future__ import annotations

import getpass
import re
import socket
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import anyio
import click

from agent_rooms_mcp import owner_actions
from agent_rooms_mcp.cli import connect as snippets
from agent_rooms_mcp.cli.common import Failed, emit, guarded, json_option, operator, run, settings
from agent_rooms_mcp.doctor import Exposed
from agent_rooms_mcp.doctor import check as check_all
from agent_rooms_mcp.errors import ErrorCode
from agent_rooms_mcp.home import check_private_file, write_private_file
from agent_rooms_mcp.hub import Hub, check_home, init_home
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.models import DoctorReport
from agent_rooms_mcp.principals import DEFAULT_SCOPES, AgentTool, Human, format_scopes
from agent_rooms_mcp.public import BindRefused, exposure_for
from agent_rooms_mcp.settings import Settings


@click.command()
def init() -> None:
    """Create the hub's home (AGENT_ROOMS_HOME, default ~/.agent-rooms): database and issuer key. Idempotent."""
    s = settings()
    created = guarded(lambda: anyio.run(init_home, s, operator()))
    click.echo(f"{'initialised' if created else 'already initialised'}: {s.home}")


async def _ensure_token_file(hub: Hub, agent: str, *, new: bool) -> bool:
    """Mint a token into the agent's 0600 token file if it has none (or `new`); a replaced one is revoked.
    For an agent of an owner who is not local, the operator does both on that owner's behalf (DESIGN §2)."""
    path = snippets.token_file(hub.settings, agent)
    if path.exists():
        check_private_file(path)  # a file others can read would be refused by the server anyway
        if not new:
            return False
    actor = (await owner_actions.acting_on_agent(hub, Human(operator()), agent)).actor
    issued = await hub.accounts.issue_token(actor, agent, timedelta(seconds=hub.settings.limits.token_ttl_default_s))
    if path.exists():
        # Nobody holds the old token once its file is overwritten: it must not stay valid.
        await hub.accounts.revoke_secret(actor, path.read_text(encoding="ascii").strip())
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


F = TypeVar("F", bound=Callable[..., Any])


def exposure_options(*, files_must_exist: bool) -> Callable[[F], F]:
    """The flags that say how `serve --http` is reached (DESIGN §9.3): `serve` takes them, `doctor` judges
    them, one definition for both. Doctor reports a missing TLS file as a check, so it need not exist."""
    tls = click.Path(exists=files_must_exist, dir_okay=False)

    def apply(fn: F) -> F:
        for option in (
            click.option("--tls-key", type=tls, default=None, help="Serve TLS: key."),
            click.option("--tls-cert", type=tls, default=None, help="Serve TLS: cert."),
            click.option(
                "--trust-proxy", default=None, help="ADDR[,ADDR]: the TLS proxy in front; only it may connect."
            ),
            click.option(
                "--public-url", default=None, help="The https:// address clients reach the hub at (public mode)."
            ),
            click.option("--host", default="127.0.0.1", show_default=True),
        ):
            fn = option(fn)
        return fn

    return apply


@click.command()
@click.option("--http", "use_http", is_flag=True, help="Serve streamable HTTP at /mcp instead of stdio.")
@exposure_options(files_must_exist=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535))
def serve(
    use_http: bool,
    host: str,
    port: int,
    public_url: str | None,
    trust_proxy: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Serve MCP: stdio (what `claude mcp add … -- agent-rooms serve` launches) or HTTP with --http.

    \b
    Public mode (DESIGN §9.3), behind a TLS proxy on this machine:
        agent-rooms serve --http --public-url https://hub.example.com --trust-proxy 127.0.0.1
    """
    network = (public_url, trust_proxy, tls_cert, tls_key)
    if not use_http and any(v is not None for v in network):
        raise click.UsageError("--public-url, --trust-proxy and --tls-* apply to --http only")
    if use_http:
        # Refused before the home is even read: an unsafe bind is a usage error (exit 2) naming its fix.
        try:
            exposure = exposure_for(host, public_url, trust_proxy, (tls_cert, tls_key))
        except BindRefused as e:
            raise click.UsageError(str(e)) from None
    configure_logging()
    s: Settings = settings()
    # Refuse an unsafe or missing home here, with its fix, rather than after announcing a server.
    guarded(lambda: check_home(s))
    if not use_http:
        guarded(lambda: anyio.run(_serve_stdio, s))
        return
    import uvicorn

    from agent_rooms_mcp.http import HttpHub
    from agent_rooms_mcp.serving import bounded_protocol

    try:
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except OSError as e:
        raise Failed(ErrorCode.CONFLICT.value, f"cannot listen on {host}:{port}: {e.strerror}", False) from e

    scheme = "https" if tls_cert else "http"
    shown = f" as {public_url}" if public_url else ""
    click.echo(f"agent-rooms serving {scheme}://{host}:{port}/mcp{shown} (Ctrl-C to stop)", err=True)
    # Our protocol: uvicorn's h11 one with head and body timers and a connection cap (serving.py).
    config = uvicorn.Config(
        HttpHub(s, exposure),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=bounded_protocol(s.limits),
        # uvicorn believes X-Forwarded-* from 127.0.0.1 by default, rewriting the client address the
        # failed-authentication limit counts against: forwarded headers are ours to judge (public.py).
        proxy_headers=False,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )
    uvicorn.Server(config).run()


@click.command()
@exposure_options(files_must_exist=False)
@json_option
def doctor(
    host: str, public_url: str | None, trust_proxy: str | None, tls_cert: str | None, tls_key: str | None, as_json: bool
) -> None:
    """Check this hub's home, and the public-mode flags `serve --http` would be given; exit 1 on any failure.

    \b
    Example, before serving behind a TLS proxy:
        agent-rooms doctor --host 0.0.0.0 --public-url https://hub.example.com --trust-proxy 127.0.0.1
    """
    exposed = Exposed(host, public_url, trust_proxy, tls_cert, tls_key)
    report = guarded(lambda: check_all(settings(), exposed), as_json=as_json)
    emit(report, as_json=as_json, text=_report_text)
    if not report.ok:
        sys.exit(1)


def _report_text(report: DoctorReport) -> str:
    lines = []
    for c in report.checks:
        lines.append(f"{c.status.value:<5} {c.id:<17} {c.message}")
        if c.fix:
            lines.append(f"{'':<23} fix: {c.fix}")
    return "\n".join(lines)


@click.command()
def bridge() -> None:
    """A woken CLI's MCP server: relay stdio to the hub holding only the run token (AGENT_ROOMS_TOKEN_FILE), over
    AGENT_ROOMS_BRIDGE_SOCKET or AGENT_ROOMS_HUB_URL. Runs launch it as `python -m agent_rooms_mcp bridge`, which
    loads nothing of the store."""
    from agent_rooms_mcp.bridge import main as bridge_main

    raise SystemExit(bridge_main())


async def _serve_stdio(s: Settings) -> None:
    from agent_rooms_mcp.stdio import serve_stdio

    await serve_stdio(s)
