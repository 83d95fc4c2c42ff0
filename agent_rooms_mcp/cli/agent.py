"""`agent-rooms agent`: add agents, list them, set their scopes, stop their runs."""

from __future__ import annotations

import sys

import anyio
import click

from agent_rooms_mcp.cli.common import confirm_or_refuse, emit, guarded, json_option, operator, run, table
from agent_rooms_mcp.errors import invalid
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.models import AgentEnvList, AgentInfo, AgentList, RunInfo, StoppedRun, StopResult
from agent_rooms_mcp.principals import DEFAULT_SCOPES, AgentTool, Scope, format_scopes, parse_scopes
from agent_rooms_mcp.run_states import FINAL_STATES

INVOKE_WARNING = (
    "Giving an agent 'invoke' lets the hub wake it: its CLI then runs unsandboxed with your permissions, "
    "and room content from others is untrusted input to it. Continue?"
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
    created: AgentInfo = run(
        lambda hub: hub.accounts.add_agent(operator(), handle, owner_ref, AgentTool(tool), wanted, workdir),
        as_json=as_json,
    )
    emit(created, as_json=as_json, text=lambda a: f"added agent {a.handle} ({a.agent_id}) scopes={','.join(a.scopes)}")


@agent.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List agents with their owner, tool and scopes."""
    agents: AgentList = run(lambda hub: hub.accounts.list_agents(), as_json=as_json)
    rows = [[a.handle, a.owner, a.tool, ",".join(a.scopes), a.agent_id] for a in agents.agents]
    emit(agents, as_json=as_json, text=lambda _: table(rows, ["HANDLE", "OWNER", "TOOL", "SCOPES", "AGENT_ID"]))


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
    done: AgentInfo = run(lambda hub: hub.accounts.set_scopes(operator(), handle, wanted), as_json=as_json)
    emit(done, as_json=as_json, text=lambda a: f"{a.handle} scopes={','.join(a.scopes) or '(none)'}")


@agent.command("stop")
@click.argument("handle")
@click.option("--run", "run_id", help="Only this run.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Return once the runs have ended.")
@json_option
def stop(handle: str, run_id: str | None, wait: bool, as_json: bool) -> None:
    """Stop HANDLE's runs: queued ones end at once; a running CLI gets SIGINT (its own interrupt, so the
    session stays resumable), then SIGTERM, then SIGKILL of everything it started. Needs no --yes."""

    async def call(hub: Hub) -> StopResult:
        asked = await hub.runs.stop_as_owner(operator(), handle, run_id)
        running = [s.run_id for s in asked.stopped if s.state == "stopping"]
        caps = hub.settings.wake
        # SIGINT, SIGTERM and SIGKILL take at most the two graces; past that plus a lease, the supervisor
        # holding the run is gone, and the run shows `stopping` until another one marks it lost.
        with anyio.move_on_after(caps.grace_int_s + caps.grace_term_s + caps.lease_s):
            while wait and running:
                states = await hub.runs.states(running)
                if all(states[r] in FINAL_STATES for r in running):
                    break
                await hub.store.wait_changed(0.1)  # the supervisor holding the run may be another process
        return StopResult(stopped=[_ended(await hub.runs.get(s.run_id)) for s in asked.stopped])

    done: StopResult = run(call, as_json=as_json)
    rows = [[s.run_id, s.state, s.stop_signal] for s in done.stopped]
    emit(
        done,
        as_json=as_json,
        text=lambda _: table(rows, ["RUN_ID", "STATE", "SIGNAL"]) if rows else "(nothing to stop)",
    )


def _ended(info: RunInfo) -> StoppedRun:
    signal = info.stop_signal if info.stop_signal in ("SIGINT", "SIGTERM", "SIGKILL") else "none"
    return StoppedRun(run_id=info.run_id, stop_signal=signal, state=info.state)  # type: ignore[arg-type]


@agent.group("env")
def env() -> None:
    """Variables for an agent's woken CLI (a provider key, say): sealed at rest, values never shown."""


@env.command("set")
@click.argument("handle")
@click.argument("name")
@json_option
def env_set(handle: str, name: str, as_json: bool) -> None:
    """Give HANDLE's woken CLI the variable NAME. The value is read from standard input (hidden on a
    terminal), never from the command line, where other users could see it.

    \b
    Example:
        agent-rooms agent env set alice-claude ANTHROPIC_API_KEY < key.txt
    """
    value = click.prompt(name, hide_input=True) if sys.stdin.isatty() else sys.stdin.read().rstrip("\r\n")
    done: AgentEnvList = run(lambda hub: hub.accounts.set_env(operator(), handle, name, value), as_json=as_json)
    emit(done, as_json=as_json, text=lambda e: f"{e.agent}: {', '.join(e.names)}")


@env.command("unset")
@click.argument("handle")
@click.argument("name")
@json_option
def env_unset(handle: str, name: str, as_json: bool) -> None:
    """Remove the variable NAME from HANDLE's woken CLI."""
    done: AgentEnvList = run(lambda hub: hub.accounts.unset_env(operator(), handle, name), as_json=as_json)
    emit(done, as_json=as_json, text=lambda e: f"{e.agent}: {', '.join(e.names) or '(none)'}")


@env.command("list")
@click.argument("handle")
@json_option
def env_list(handle: str, as_json: bool) -> None:
    """List the names of the variables HANDLE's woken CLI gets (never their values)."""
    done: AgentEnvList = run(lambda hub: hub.accounts.env_names(handle), as_json=as_json)
    emit(done, as_json=as_json, text=lambda e: "\n".join(e.names) or "(none)")
