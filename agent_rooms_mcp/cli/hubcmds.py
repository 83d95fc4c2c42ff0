"""`agent-rooms init | quickstart | doctor | bridge`: the hub's own lifecycle and first run (DESIGN §9)."""

from __future__ import annotations

import getpass
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import click

from agent_rooms_mcp import clients
from agent_rooms_mcp.cli.common import emit, guarded, json_option, operator, refuse_new_hub_on_device, settings
from agent_rooms_mcp.cli.connect import (
    DEFAULT_URL,
    claude_http,
    claude_stdio,
    ensure_token_file,
    report_text,
    token_file,
)
from agent_rooms_mcp.cli.serve import exposure_options
from agent_rooms_mcp.doctor import Exposed
from agent_rooms_mcp.doctor import check as check_all
from agent_rooms_mcp.hub import Hub, init_home
from agent_rooms_mcp.models import AgentInfo, OwnerInfo
from agent_rooms_mcp.principals import DEFAULT_SCOPES, AgentTool, format_scopes
from agent_rooms_mcp.public import is_loopback


@click.command()
def init() -> None:
    """Create the hub's home (AGENT_ROOMS_HOME, default ~/.agent-rooms): database and issuer key. Idempotent."""
    refuse_new_hub_on_device("init")
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
    refuse_new_hub_on_device("quickstart")
    s = settings()
    owner, agent = _os_handle(), f"{_os_handle()}-claude"

    async def main() -> tuple[str, str, bool, list[str], dict[str, bool], set[str]]:
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
            every = (await hub.accounts.list_owners()).owners
            mine = _operators_owner(owner, every, agents)
            ours = sorted((a for a in agents if a.owner == mine), key=lambda a: (a.tool != AgentTool.CLAUDE, a.handle))
            # Another person is any owner this hub does not spawn for: never the one at this machine.
            others = [o.handle for o in every if o.handle != mine and not o.local]
            verified = {o.handle: o.verified for o in every}
            grants = (await hub.grants.list_grants(None, include_revoked=False)).grants
            granted = {g.from_owner for g in grants if g.to_owner == mine}
            # The suggested second agent: offered until it exists, so the printed lines never collide.
            codex_exists = any(a.handle == f"{mine}-codex" for a in agents)
            return (ours[0].handle if ours else f"{mine}-claude"), mine, codex_exists, others, verified, granted

    first, first_owner, second_exists, others, verified, granted = guarded(lambda: anyio.run(main))
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
    _another_person(cmd, url, first_owner, others, verified, granted)


def _operators_owner(os_handle: str, owners: list[OwnerInfo], agents: list[AgentInfo]) -> str:
    """The owner of the person at this machine: the one quickstart made for this login, else the first owner
    whose agents this hub spawns (DESIGN §5, `local`); on a home made by hand with no local owner, the first
    agent's owner; on one with no agent, the owner quickstart would make."""
    if any(o.handle == os_handle for o in owners):
        return os_handle
    fallback = agents[0].owner if agents else os_handle
    return next((o.handle for o in owners if o.local), fallback)


def _another_person(
    cmd: str, url: str, me: str, others: list[str], verified: dict[str, bool], granted: set[str]
) -> None:
    """The whole way in for another person (DESIGN §9.1): an owner, both owners verified, a code for their
    machine, a code for the lobby here; then their own machine logs in, adds their agent, joins, grants this
    owner (DESIGN §4: without it a mention of their agent is refused NO_GRANT), listens, and decides each
    request. The person is the first owner this hub does not spawn for (never the operator), or `bob` until
    there is one, so no line collides with what an earlier run's made."""
    them = others[0] if others else next(h for h in ("bob", "alice", "carol", "dave", "erin") if h not in verified)
    base = url.removesuffix("/").removesuffix("/mcp")
    host = urlsplit(base).hostname or ""
    click.echo(f"\nTo bring in another person ({them} here; use their name), on this machine:")
    if them not in verified:
        click.echo(f"  {cmd} owner add {them}")
    for who in (them, me):  # cross-owner work needs both owners verified (DESIGN §4)
        if not verified.get(who, False):
            click.echo(f'  {cmd} owner verify {who} --method "in person"    # who they are, as you checked it')
    click.echo(f"  {cmd} owner enroll {them} --url {base}    # a one-time code for their machine")
    click.echo(f"  {cmd} invite create lobby --by {me}    # a one-time code to join the lobby")
    click.echo("then on their machine, with their own agent-rooms and those two codes:")
    click.echo(f"    agent-rooms login {base} --code enr_...")
    click.echo(
        f"    agent-rooms agent add {them}-claude --owner {them} --tool claude --scopes read,post,task,invoke --yes"
    )
    click.echo(f"    agent-rooms invite accept inv_... --owner {them} --agent {them}-claude")
    if them not in granted:
        click.echo(
            f"    agent-rooms grant add --from {them} --to {me}    # {me}'s agents may then ask {them}'s for work"
        )
    click.echo(f"    agent-rooms listen    # wakes {them}-claude there (listen.toml with cross_owner = true: README)")
    click.echo(f"    agent-rooms consent list --owner {them}    # each request from {me}'s agents waits here")
    click.echo(f"    agent-rooms consent accept prop_... --owner {them}    # then the listener wakes {them}-claude")
    if is_loopback(host):
        click.echo(
            f"{base} is reached from this machine only: another machine logs in at the hub's https:// address "
            '(README, "Several people, several machines").'
        )


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
