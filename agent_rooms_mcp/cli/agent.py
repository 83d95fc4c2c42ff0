"""`agent-rooms agent`: add agents, list them, set their scopes, stop their runs."""

from __future__ import annotations

import sys

import click

from agent_rooms_mcp.cli.common import (
    confirm_or_refuse,
    emit,
    emit_receipt,
    guarded,
    json_option,
    operator,
    perform,
    remote,
    run,
    settings,
    table,
)
from agent_rooms_mcp.errors import invalid
from agent_rooms_mcp.local_env import LocalEnv
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.models import AgentEnvList, AgentExport, AgentInfo, AgentList, Receipt, StopResult
from agent_rooms_mcp.owner_actions import (
    AgentAdd,
    AgentDelete,
    AgentExportArgs,
    AgentScopes,
    AgentSet,
    AgentStop,
    NoArgs,
)
from agent_rooms_mcp.principals import DEFAULT_SCOPES, AgentTool, Scope, format_scopes, parse_scopes

INVOKE_WARNING = (
    "Giving an agent 'invoke' lets the hub wake it: its CLI then runs with your permissions inside the sandbox "
    "(where there is one), and room content from others is untrusted input to it. Continue?"
)
SANDBOX_OFF_WARNING = (
    "Turning the sandbox off lets this agent's woken CLI read and write everything its OS user can: your keys, "
    "other projects, the hub's own home when it runs on the hub. Wakes caused by other owners are then refused "
    "(sandbox_required), and a hub running as root refuses them all (root_refused). Continue?"
)


def _scopes(text: str, as_json: bool) -> frozenset[Scope]:
    def parse() -> frozenset[Scope]:
        try:
            return parse_scopes(text)
        except ValueError as e:
            raise invalid("scopes", str(e)) from None

    return guarded(parse, as_json=as_json)


@click.group()
def agent() -> None:
    """Agents: one tool install (Claude Code, Codex, ...) of one owner."""


@agent.command("add")
@click.argument("handle")
@click.option("--owner", "owner_ref", required=True, help="The owner's handle.")
@click.option("--tool", type=click.Choice([t.value for t in AgentTool]), required=True)
@click.option("--scopes", default=format_scopes(DEFAULT_SCOPES), show_default=True, help="Comma-separated.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="Where a woken run works.")
@click.option("--yes", is_flag=True, help="Confirm giving 'invoke' without asking.")
@json_option
def add(handle: str, owner_ref: str, tool: str, scopes: str, workdir: str | None, yes: bool, as_json: bool) -> None:
    """Add agent HANDLE for OWNER, then give it a token with `agent-rooms connect HANDLE`.

    \b
    Example:
        agent-rooms agent add alice-claude --owner alice --tool claude
    """
    wanted = _scopes(scopes, as_json)
    if Scope.INVOKE in wanted:
        confirm_or_refuse(INVOKE_WARNING, yes)
    args = AgentAdd(handle=handle, owner=owner_ref, tool=AgentTool(tool), scopes=format_scopes(wanted), workdir=workdir)
    created: AgentInfo = perform("agent.add", args, as_json=as_json)
    emit(created, as_json=as_json, text=lambda a: f"added agent {a.handle} ({a.agent_id}) scopes={','.join(a.scopes)}")


@agent.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List agents with their owner, tool and scopes."""
    agents: AgentList = perform("agent.list", NoArgs(), as_json=as_json)
    rows = [
        [a.handle, a.owner, a.tool, ",".join(a.scopes), "on" if a.sandbox else "OFF", a.agent_id] for a in agents.agents
    ]
    emit(agents, as_json=as_json,
         text=lambda _: table(rows, ["HANDLE", "OWNER", "TOOL", "SCOPES", "SANDBOX", "AGENT_ID"]))  # fmt: skip


@agent.command("scopes")
@click.argument("handle")
@click.argument("scopes")
@click.option("--yes", is_flag=True, help="Confirm giving 'invoke' without asking.")
@json_option
def scopes_(handle: str, scopes: str, yes: bool, as_json: bool) -> None:
    """Set agent HANDLE's scopes to SCOPES (comma-separated; effective on its next call)."""
    wanted = _scopes(scopes, as_json)
    if Scope.INVOKE in wanted:
        confirm_or_refuse(INVOKE_WARNING, yes)
    done: AgentInfo = perform("agent.scopes", AgentScopes(handle=handle, scopes=format_scopes(wanted)), as_json=as_json)
    emit(done, as_json=as_json, text=lambda a: f"{a.handle} scopes={','.join(a.scopes) or '(none)'}")


@agent.command("set")
@click.argument("handle")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="Where a woken run works.")
@click.option("--tool", type=click.Choice([t.value for t in AgentTool]), default=None)
@click.option("--sandbox", type=click.Choice(["on", "off"]), default=None, help="Run woken CLIs in the sandbox.")
@click.option("--yes", is_flag=True, help="Confirm turning the sandbox off without asking.")
@json_option
def set_(handle: str, workdir: str | None, tool: str | None, sandbox: str | None, yes: bool, as_json: bool) -> None:
    """Change agent HANDLE's workdir, tool or sandbox (effective from its next wake).

    \b
    Example:
        agent-rooms agent set alice-claude --workdir ~/src/project
    """
    if sandbox == "off":
        confirm_or_refuse(SANDBOX_OFF_WARNING, yes)
    args = AgentSet(
        handle=handle,
        workdir=workdir,
        tool=AgentTool(tool) if tool else None,
        sandbox=None if sandbox is None else sandbox == "on",
    )
    done: AgentInfo = perform("agent.set", args, as_json=as_json)
    where = done.workdir or "(default)"
    emit(done, as_json=as_json,
         text=lambda a: f"{a.handle} tool={a.tool} workdir={where} sandbox={'on' if a.sandbox else 'off'}")  # fmt: skip


@agent.command("stop")
@click.argument("handle")
@click.option("--run", "run_id", help="Only this run.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Return once the runs have ended.")
@json_option
def stop(handle: str, run_id: str | None, wait: bool, as_json: bool) -> None:
    """Stop HANDLE's runs: queued ones end at once; a running CLI gets SIGINT (its own interrupt, so the
    session stays resumable), then SIGTERM, then SIGKILL of everything it started. Needs no --yes."""

    done: StopResult = perform("agent.stop", AgentStop(handle=handle, run_id=run_id, wait=wait), as_json=as_json)
    rows = [[s.run_id, s.state, s.stop_signal] for s in done.stopped]
    emit(
        done,
        as_json=as_json,
        text=lambda _: table(rows, ["RUN_ID", "STATE", "SIGNAL"]) if rows else "(nothing to stop)",
    )


@agent.command("delete")
@click.argument("handle")
@click.option("--yes", is_flag=True, help="Confirm without asking.")
@json_option
def delete(handle: str, yes: bool, as_json: bool) -> None:
    """Delete agent HANDLE at once: every token, passport and run token of it refused from its next call,
    its memberships ended, its waiting wakes and pending proposals withdrawn, its runs stopped. Prints a
    receipt proving each credential refused and each run's processes gone. The handle is never reused.

    \b
    Example:
        agent-rooms agent delete alice-claude --yes
    """
    confirm_or_refuse(f"Delete agent {handle} and revoke every credential it holds? This cannot be undone.", yes)
    done: Receipt = perform("agent.delete", AgentDelete(handle=handle), as_json=as_json)
    emit_receipt(done, as_json=as_json)


@agent.command("export")
@click.argument("handle")
@json_option
def export(handle: str, as_json: bool) -> None:
    """One of your agents' record as JSON, a deleted one too (until the purge): its memberships past and
    present and its tokens. Another owner's agent answers NOT_FOUND, deleted or not."""
    done: AgentExport = perform("agent.export", AgentExportArgs(handle=handle), as_json=as_json)
    click.echo(done.model_dump_json(indent=2))


@agent.group("env")
def env() -> None:
    """Variables for an agent's woken CLI (a provider key, say): sealed at rest, values never shown."""


# On an enrolled device the variables stay on this machine for its listener's runs (DESIGN §9.1, invariant 94):
# they are sealed here, and no request goes to the hub, which never holds them and so has nothing to audit.
SEALED_HERE = "(sealed on this machine; never sent to the hub)"


def _on_device(as_json: bool) -> LocalEnv | None:
    if remote(as_json) is None:
        return None
    configure_logging()  # the `listener.env.*` lines go to stderr, never into the JSON on stdout
    return LocalEnv(settings().home)


def _show_sealed(handle: str, names: list[str], as_json: bool) -> None:
    listed = AgentEnvList(agent=handle, names=names)
    emit(listed, as_json=as_json, text=lambda e: f"{e.agent}: {', '.join(e.names) or '(none)'} {SEALED_HERE}")


@env.command("set")
@click.argument("handle")
@click.argument("name")
@json_option
def env_set(handle: str, name: str, as_json: bool) -> None:
    """Give HANDLE's woken CLI the variable NAME. The value is read from standard input (hidden on a
    terminal), never from the command line, where other users could see it. On a machine enrolled with
    `login` it is sealed on that machine for its listener's runs and never sent to the hub.

    \b
    Example:
        agent-rooms agent env set alice-claude ANTHROPIC_API_KEY < key.txt
    """
    here = _on_device(as_json)
    value = click.prompt(name, hide_input=True) if sys.stdin.isatty() else sys.stdin.read().rstrip("\r\n")
    if here is not None:
        _show_sealed(handle, guarded(lambda: here.set(handle, name, value), as_json=as_json), as_json)
        return
    done: AgentEnvList = run(lambda hub: hub.accounts.set_env(operator(), handle, name, value), as_json=as_json)
    emit(done, as_json=as_json, text=lambda e: f"{e.agent}: {', '.join(e.names)}")


@env.command("unset")
@click.argument("handle")
@click.argument("name")
@json_option
def env_unset(handle: str, name: str, as_json: bool) -> None:
    """Remove the variable NAME from HANDLE's woken CLI (on an enrolled machine, from this machine)."""
    here = _on_device(as_json)
    if here is not None:
        _show_sealed(handle, guarded(lambda: here.unset(handle, name), as_json=as_json), as_json)
        return
    done: AgentEnvList = run(lambda hub: hub.accounts.unset_env(operator(), handle, name), as_json=as_json)
    emit(done, as_json=as_json, text=lambda e: f"{e.agent}: {', '.join(e.names) or '(none)'}")


@env.command("list")
@click.argument("handle")
@json_option
def env_list(handle: str, as_json: bool) -> None:
    """List the names of the variables HANDLE's woken CLI gets (never their values; on an enrolled machine,
    those sealed on this machine)."""
    here = _on_device(as_json)
    if here is not None:
        _show_sealed(handle, guarded(lambda: here.names(handle), as_json=as_json), as_json)
        return
    done: AgentEnvList = run(lambda hub: hub.accounts.env_names(handle), as_json=as_json)
    emit(done, as_json=as_json, text=lambda e: "\n".join(e.names) or "(none)")
