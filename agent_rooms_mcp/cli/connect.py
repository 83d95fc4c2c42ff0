"""`agent-rooms connect`: an agent's client configuration (DESIGN §9), printed, applied with the client's own
command (`--apply`), or checked for drift (`--check`), with its token kept in a 0600 file.

The token is never printed into a prompt or written into a config: a stdio entry reads it from the file
(AGENT_ROOMS_TOKEN_FILE), an HTTP entry from the environment the person fills from the file.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from datetime import timedelta
from pathlib import Path

import click

from agent_rooms_mcp import clients, owner_actions
from agent_rooms_mcp.cli.common import (
    Failed,
    confirm_or_refuse,
    emit,
    json_option,
    operator,
    perform,
    remote,
    run,
    settings,
)
from agent_rooms_mcp.clients import DEFAULT_URL, ClientCommandFailed, ConfigError, token_file
from agent_rooms_mcp.home import check_private_file, ensure_private_dir, write_private_file
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.models import CheckStatus, DoctorReport, IssuedToken
from agent_rooms_mcp.owner_actions import TokenIssue, TokenRevoke
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.settings import Settings

__all__ = [
    "DEFAULT_URL",
    "claude_http",
    "claude_stdio",
    "codex_toml",
    "connect",
    "ensure_token_file",
    "mcp_json",
    "report_text",
]
__all__ += ["token_file"]


async def ensure_token_file(hub: Hub, agent: str, *, new: bool) -> bool:
    """Mint a token into the agent's 0600 token file if it has none (or `new`); a replaced one is revoked.
    For an agent of an owner who is not local, the operator does both on that owner's behalf (DESIGN §2)."""
    path = token_file(hub.settings, agent)
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


# What `connect` prints: the same entry `--apply` makes, as the command a person would type.


def claude_stdio(settings: Settings, agent: str) -> str:
    entry = clients.wanted(settings, "claude", agent, None)
    return shlex.join(clients.add_argv("claude", "claude", clients.SERVER_NAME, entry))


def claude_http(settings: Settings, agent: str, url: str) -> str:
    """The header holds `${AGENT_ROOMS_TOKEN}` in single quotes: Claude Code expands it when it connects. A
    shell `$(cat FILE)` would be expanded at add time and store the token itself in ~/.claude.json."""
    entry = clients.wanted(settings, "claude", agent, url)
    return shlex.join(clients.add_argv("claude", "claude", clients.SERVER_NAME, entry))


def codex_toml(settings: Settings, agent: str, url: str | None) -> str:
    if url is not None:
        return (
            f"# {clients.token_env_line(settings, agent)} before starting codex\n"
            "[mcp_servers.agent-rooms]\n"
            f"url = {json.dumps(url)}\n"
            f'bearer_token_env_var = "{clients.TOKEN_ENV}"\n'
        )
    return (
        "[mcp_servers.agent-rooms]\n"
        f"command = {json.dumps(clients.command_path())}\n"
        'args = ["serve"]\n'
        "[mcp_servers.agent-rooms.env]\n"
        f"AGENT_ROOMS_HOME = {json.dumps(str(settings.home))}\n"
        f"AGENT_ROOMS_TOKEN_FILE = {json.dumps(str(token_file(settings, agent)))}\n"
    )


def mcp_json(settings: Settings, agent: str, url: str | None) -> str:
    if url is not None:
        entry: dict[str, object] = {"type": "http", "url": url, "headers": {"Authorization": clients.BEARER_REFERENCE}}
    else:
        wanted = clients.wanted(settings, "claude", agent, None)
        entry = {"type": "stdio", "command": wanted.command, "args": list(wanted.args), "env": dict(wanted.env)}
    return json.dumps({"mcpServers": {clients.SERVER_NAME: entry}}, indent=2)


@click.command("connect")
@click.argument("agent", required=False)
@click.option("--client", type=click.Choice(["claude", "codex", "json"]), default="claude", show_default=True)
@click.option("--http", "url", default=None, help=f"Connect over HTTP to this URL (e.g. {DEFAULT_URL}).")
@click.option("--new-token", is_flag=True, help="Mint a fresh token into the token file (the old one is revoked).")
@click.option("--apply", "do_apply", is_flag=True, help="Add the entry with the client's own command, at user scope.")
@click.option("--check", "do_check", is_flag=True, help="Report drift in the clients' configuration; exit 1 on any.")
@click.option("--name", default=clients.SERVER_NAME, show_default=True, help="The entry's name in the client.")
@click.option("--yes", is_flag=True, help="--apply: replace a differing entry without asking; --check: apply its fix.")
@json_option
def connect(
    agent: str | None,
    client: str,
    url: str | None,
    new_token: bool,
    do_apply: bool,
    do_check: bool,
    name: str,
    yes: bool,
    as_json: bool,
) -> None:
    """Print the exact `claude mcp add` command, Codex config.toml block, or .mcp.json entry for AGENT; with
    --apply run the client's own command instead; with --check report drift.

    \b
    Examples:
        agent-rooms connect alice-claude --client claude --apply
        agent-rooms connect alice-codex --client codex --http http://127.0.0.1:8765/mcp --apply
        agent-rooms connect --check
    """
    s = settings()
    if do_check:
        if do_apply or new_token:
            raise click.UsageError("--check only reads: run it without --apply or --new-token")
        if remote(as_json) is not None:
            raise Failed(
                "FORBIDDEN_SCOPE",
                "connect --check reads token states in the hub's database, on the hub's machine; here, "
                "`agent-rooms token list AGENT` shows whether a token is active, and `claude mcp list` the entries",
                as_json,
            )
        _check(s, url, yes=yes, as_json=as_json)
        return
    if agent is None:
        raise click.UsageError("name the agent: agent-rooms connect AGENT (agent-rooms agent list shows them)")
    if do_apply and client == "json":
        raise click.UsageError("--apply needs --client claude or --client codex (json is printed, never applied)")

    applied: clients.Client = "claude" if client == "claude" else "codex"
    if do_apply and shutil.which(clients.binary(s, applied)) is None:
        # Before a token is minted for an entry that cannot be made.
        program = clients.binary(s, applied)
        raise Failed("CLIENT", f"{program} is not installed (or not on PATH); install it, or set "
                     f"AGENT_ROOMS_{applied.upper()}_BIN to its path", as_json)  # fmt: skip

    async def main(hub: Hub) -> bool:
        await hub.accounts.list_tokens(agent)  # NOT_FOUND for an unknown agent, before any file is written
        return await ensure_token_file(hub, agent, new=new_token)

    far = remote(as_json)
    if far is not None:
        # An owner's own machine (DESIGN §9.1): issuing their agent's token is an owner action, sent to the
        # hub; the token file is this machine's, and the entry reaches the hub over HTTP (no hub here to serve
        # stdio), reading the token from the environment, never holding it.
        url = url or far.device.hub + "/mcp"
        minted = _device_token_file(s, far.device.hub, agent, new=new_token, as_json=as_json)
    else:
        minted = run(main, as_json=as_json)
    if minted:
        click.echo(f"# token written to {token_file(s, agent)} (0600)", err=True)
    if do_apply:
        _apply(s, applied, agent, url, name, yes=yes, as_json=as_json)
        return
    if new_token:
        _after_rotation(s, agent)
    if client == "claude":
        if url:
            click.echo(f"# before starting claude: {clients.token_env_line(s, agent)}", err=True)
        click.echo(claude_http(s, agent, url) if url else claude_stdio(s, agent))
    elif client == "codex":
        click.echo(codex_toml(s, agent, url), nl=False)
    else:
        click.echo(mcp_json(s, agent, url))


def _device_token_file(s: Settings, hub: str, agent: str, *, new: bool, as_json: bool) -> bool:
    """ensure_token_file on a device: the hub mints (the owner's own agent only, `token.issue`), this machine
    keeps the token in its 0600 file and its id beside it, so that `--new-token` revokes the one it replaces."""
    path = token_file(s, agent)
    id_path = path.with_name(path.name + ".id")
    if path.exists():
        check_private_file(path)
        if not id_path.exists():
            # Not one this machine had the hub logged in to issue: in a home that holds a hub of its own, that
            # hub's token for an agent of the same handle. An entry for the other hub must not send it there,
            # and the hub here's own entry reads it.
            raise Failed(
                "HOME",
                f"{path} holds a token that {hub} did not issue to this machine (a hub in {s.home} keeps its own"
                f" tokens there): to connect to {hub}, give this device a home of its own"
                " (AGENT_ROOMS_HOME=DIR agent-rooms login ...), or remove the file if nothing reads it",
                as_json,
            )
        if not new:
            return False
    ttl_s = s.limits.token_ttl_default_s
    issued: IssuedToken = perform("token.issue", TokenIssue(agent=agent, ttl_s=ttl_s), as_json=as_json)
    old_id = id_path.read_text(encoding="ascii").strip() if path.exists() else None
    ensure_private_dir(s.tokens_dir)
    write_private_file(path, issued.token.encode("ascii") + b"\n")
    write_private_file(id_path, issued.token_id.encode("ascii") + b"\n")
    if old_id is not None:
        # Nobody holds the old token once its file is overwritten: it must not stay valid.
        perform("token.revoke", TokenRevoke(token_id=old_id), as_json=as_json)
    return True


def _apply(
    s: Settings, client: clients.Client, agent: str, url: str | None, name: str, *, yes: bool, as_json: bool
) -> None:
    try:
        step = clients.plan(s, client, agent, url, name)
        if step.unchanged:
            outcome = "unchanged"
        else:
            if step.existing is not None:
                held = step.existing.file
                confirm_or_refuse(f"{client} already has an entry {name!r} ({held}) that differs: replace it?", yes)
            clients.apply(s, step, agent, url)
            outcome = "replaced" if step.existing is not None else "added"
    except (ClientCommandFailed, ConfigError) as e:
        raise Failed("CLIENT", str(e), as_json) from e
    if as_json:
        click.echo(json.dumps({"client": client, "name": name, "agent": agent, "outcome": outcome}))
    else:
        where = "user scope: every project" if client == "claude" else str(s.clients.codex_config)
        click.echo(f"{client}: entry {name!r} for {agent} {outcome} ({where})")
    if url:
        export = clients.token_env_line(s, agent)
        click.echo(f"# the entry reads the token from {clients.TOKEN_ENV}: {export}", err=True)


def _after_rotation(s: Settings, agent: str) -> None:
    """What a new token means for the entries `--apply` made for this agent: they name the file or the
    environment variable, never the token, so they carry over; an HTTP one needs the variable exported again."""
    for row in clients.load_applied(s):
        if row.agent != agent:
            continue
        if row.url:
            click.echo(f"# {row.client}'s entry {row.name!r} sends {clients.TOKEN_ENV}: "
                       f"{clients.token_env_line(s, agent)} before starting {row.client}", err=True)  # fmt: skip
        else:
            click.echo(f"# {row.client}'s entry {row.name!r} reads the new token from {token_file(s, agent)}", err=True)


def _check(s: Settings, url: str | None, *, yes: bool, as_json: bool) -> None:
    urls = {url} if url else set()

    def checks() -> DoctorReport:
        found = run(lambda hub: clients.drift(s, hub.accounts.token_status, Path.cwd(), urls), as_json=as_json)
        return DoctorReport(ok=all(c.status is not CheckStatus.FAIL for c in found), checks=found)

    report = checks()
    connector = next(c for c in report.checks if c.id == "clients.connector")
    asked = f"Set disableClaudeAiConnectors: true in {s.clients.claude_settings}?"
    # The one fix --check offers, with consent: one identity per Claude account (DESIGN §9.4).
    if connector.status is CheckStatus.FAIL and (yes or (sys.stdin.isatty() and not as_json and click.confirm(asked))):
        path = clients.disable_connectors(s)
        click.echo(f"# set disableClaudeAiConnectors: true in {path}", err=True)
        report = checks()
    emit(report, as_json=as_json, text=report_text)
    if not report.ok:
        sys.exit(1)


def report_text(report: DoctorReport) -> str:
    """`doctor`'s and `--check`'s report for people: a line per check, its fix below it."""
    lines = [f"fixed: {line}" for line in report.fixed]
    for c in report.checks:
        lines.append(f"{c.status.value:<5} {c.id:<22} {c.message}")
        if c.fix:
            lines.append(f"{'':<28} fix: {c.fix}")
    return "\n".join(lines)
