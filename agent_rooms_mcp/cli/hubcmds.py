"""`agent-rooms init | quickstart | serve | doctor`: the hub's own lifecycle and first run (DESIGN §9)."""

from __future__ import annotations

import getpass
import re
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click

from agent_rooms_mcp import clients
from agent_rooms_mcp.cli.common import Failed, emit, guarded, json_option, operator, settings
from agent_rooms_mcp.cli.connect import (
    DEFAULT_URL,
    claude_http,
    claude_stdio,
    ensure_token_file,
    report_text,
    token_file,
)
from agent_rooms_mcp.doctor import Exposed
from agent_rooms_mcp.doctor import check as check_all
from agent_rooms_mcp.errors import ErrorCode
from agent_rooms_mcp.hub import Hub, check_home, init_home
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.principals import DEFAULT_SCOPES, AgentTool, format_scopes
from agent_rooms_mcp.public import BindRefused, exposure_for
from agent_rooms_mcp.settings import Settings


@click.command()
def init() -> None:
    """Create the hub's home (AGENT_ROOMS_HOME, default ~/.agent-rooms): database and issuer key. Idempotent."""
    s = settings()
    created = guarded(lambda: anyio.run(init_home, s, operator()))
    click.echo(f"{'initialised' if created else 'already initialised'}: {s.home}")


def _os_handle() -> str:
    handle = re.sub(r"[^a-z0-9_-]+", "-", getpass.getuser().lower()).strip("-_") or "owner"
    return handle[:40]


def _typed_command() -> str:
    """How a person types this installation's `agent-rooms`: the bare name when PATH finds this very one, else
    its absolute path, so every line quickstart prints runs as printed in a shell whose PATH lacks the venv."""
    ours = clients.command_path()
    found = shutil.which("agent-rooms")
    return "agent-rooms" if found is not None and Path(found).resolve() == Path(ours).resolve() else ours


@click.command()
@click.option("--http", "url", default=DEFAULT_URL, show_default=True, help="The URL `serve --http` will answer at.")
def quickstart(url: str) -> None:
    """First run: on an empty home create an owner, an agent, a `lobby` room and a token file; then (every
    time, minting nothing new) print how to connect Claude Code, and the next steps as runnable lines."""
    s = settings()
    owner, agent = _os_handle(), f"{_os_handle()}-claude"

    async def main() -> tuple[str, str, bool]:
        await init_home(s, operator())
        async with Hub.open(s) as hub:
            owners = await hub.accounts.list_owners()
            if not owners.owners:
                # The person at this machine: the hub spawns their agents here (DESIGN §5).
                await hub.accounts.add_owner(operator(), owner, local=True)
                await hub.accounts.add_agent(operator(), agent, owner, AgentTool.CLAUDE, DEFAULT_SCOPES, None)
                await hub.rooms.create(operator(), "lobby", owner, [agent])
                await ensure_token_file(hub, agent, new=False)
                scopes = format_scopes(DEFAULT_SCOPES)
                token_path = token_file(s, agent)
                click.echo(f"created owner {owner}, agent {agent} (scopes {scopes}), room lobby, token in {token_path}")
            agents = (await hub.accounts.list_agents()).agents
            if not agents:
                return agent, owner, False
            first = agents[0]
            # The suggested second agent: offered until it exists, so the printed lines never collide.
            return first.handle, first.owner, any(a.handle == f"{first.owner}-codex" for a in agents)

    first, first_owner, second_exists = guarded(lambda: anyio.run(main))
    second, cmd = f"{first_owner}-codex", _typed_command()
    click.echo(f"hub home: {s.home}\n")
    click.echo(f"Connect Claude Code as {first} (stdio; starts the hub on demand):")
    click.echo(f"  {claude_stdio(s, first)}\n")
    click.echo("Or over HTTP, while `agent-rooms serve --http` runs (Claude Code reads the token from the")
    click.echo("environment when it connects, so export it in the shell that starts claude):")
    click.echo(f"  {clients.token_env_line(s, first)}")
    click.echo(f"  {claude_http(s, first, url)}\n")
    click.echo("Add only one of the two: both register the server as `agent-rooms`.")
    click.echo(f"`{cmd} connect {first} --client claude --apply` runs the first for you.\n")
    click.echo("Next, a second agent (Codex) in the lobby, and its Codex config:")
    if not second_exists:
        click.echo(f"  {cmd} agent add {second} --owner {first_owner} --tool codex")
        click.echo(f"  {cmd} room add lobby --agent {second}")
    click.echo(f"  {cmd} connect {second} --client codex")
    click.echo("To bring in another person (prints a one-time code for them):")
    click.echo(f"  {cmd} invite create lobby --by {first_owner}")


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
    from agent_rooms_mcp.serving import Server, bounded_protocol

    try:
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except OSError as e:
        raise Failed(ErrorCode.CONFLICT.value, f"cannot listen on {host}:{port}: {e.strerror}", False) from e

    scheme = "https" if tls_cert else "http"
    shown = f" as {public_url}" if public_url else ""
    click.echo(f"agent-rooms serving {scheme}://{host}:{port}/mcp{shown} (Ctrl-C to stop)", err=True)
    # Our protocol: uvicorn's h11 one with head and body timers and a connection cap (serving.py).
    app = HttpHub(s, exposure)
    config = uvicorn.Config(
        app,
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
        # Told to stop, the server answers its long polls at once (`on_stop`); a request still running after
        # this long (a slow client's upload, a stream) is cancelled, so a stop never waits without end.
        timeout_graceful_shutdown=s.limits.http_shutdown_grace_s,
    )
    Server(config, on_stop=app.stop_long_polls).run()


@click.command()
@exposure_options(files_must_exist=False)
@click.option(
    "--fix", is_flag=True, help="Tighten the home's file modes (0700 directories, 0600 secrets); nothing else."
)
@json_option
def doctor(
    host: str,
    public_url: str | None,
    trust_proxy: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    fix: bool,
    as_json: bool,
) -> None:
    """Check this hub's home, its agents' CLIs and workdirs, runs, tokens, client configuration, and the
    public-mode flags `serve --http` would be given; exit 1 on any failure. Each check has a stable id.

    \b
    Example, before serving behind a TLS proxy:
        agent-rooms doctor --host 0.0.0.0 --public-url https://hub.example.com --trust-proxy 127.0.0.1
    """
    exposed = Exposed(host, public_url, trust_proxy, tls_cert, tls_key)
    report = guarded(lambda: check_all(settings(), exposed, fix=fix), as_json=as_json)
    emit(report, as_json=as_json, text=report_text)
    if not report.ok:
        sys.exit(1)


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
