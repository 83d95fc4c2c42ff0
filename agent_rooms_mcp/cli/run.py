"""`agent-rooms run`: woken runs, why each ended or never started, and what each one's CLI printed."""

from __future__ import annotations

import click

from agent_rooms_mcp.cli.common import emit, json_option, perform, remote, settings, table
from agent_rooms_mcp.models import RunInfo, RunList
from agent_rooms_mcp.owner_actions import RunGet, RunListArgs
from agent_rooms_mcp.run_states import FINAL_STATES, WAITING_STATES, Outcome, RunState

# What each outcome means to the person reading `run log`, and what to do about it (README "Run outcomes").
REASONS: dict[str, str] = {
    Outcome.OK: "the CLI finished its turn",
    Outcome.CLI_NOT_FOUND: "the agent's CLI was not found, or could not be executed inside the run (run log"
    " --stderr says which): install it, or set AGENT_ROOMS_CLAUDE_BIN / AGENT_ROOMS_CODEX_BIN /"
    " AGENT_ROOMS_OPENCLAW_BIN, then mention the agent again",
    Outcome.WORKDIR_MISSING: "the agent's workdir does not exist: agent-rooms agent set HANDLE --workdir DIR",
    Outcome.SANDBOX_UNAVAILABLE: "the sandbox (bwrap) could not start here: agent-rooms doctor says why",
    Outcome.SANDBOX_REQUIRED: "another owner caused it, and such a wake runs only inside a working sandbox",
    Outcome.ROOT_REFUSED: "its supervisor (the hub, or the owner's listener) runs as root and no unprivileged user"
    " is set: set AGENT_ROOMS_RUN_AS where it runs",
    Outcome.ENV_UNAVAILABLE: "the agent's variables could not be opened, or one is no longer allowed (the log of"
    " the hub or listener that ran it names which): see agent-rooms agent env list HANDLE",
    Outcome.MCP_FAILED: "the CLI could not reach the hub through its bridge",
    Outcome.AUTH: "the CLI is not logged in to its provider",
    Outcome.RATE_LIMIT: "the provider rate-limited the CLI; its wakes wait and retry",
    Outcome.USAGE_LIMIT: "the CLI hit a usage or turn limit",
    Outcome.OUTPUT_CAP: "the CLI printed more than a run may",
    Outcome.TIME_LIMIT: "the run went past its time limit and was stopped",
    Outcome.STOPPED: "an owner stopped it (agent stop)",
    Outcome.SHUTDOWN: "its supervisor shut down while it ran (the hub, or its owner's listener on Ctrl-C)",
    Outcome.LOST: "its supervisor stopped reporting while it ran (the hub's own, or its owner's listener, which"
    " stops its runs itself when it cannot reach the hub for the lease time, and whose runs die with it);"
    " whether it finished is unknown",
    Outcome.EXPIRED: "no listener of its owner came online before it expired (agent-rooms listen)",
}


# Why the owner's listener refused a wake by its listen.toml (DESIGN §9.1), and what to change there ({agent}).
LISTENER_REFUSALS: dict[str, str] = {
    "cross_owner_refused_here": "another owner's words caused it, and the listen.toml of {agent}'s listener has"
    " cross_owner = false for {agent} (the default). To accept such wakes (sandboxed, read-only), set"
    " cross_owner = true under [agents.{agent}] in that listen.toml and restart agent-rooms listen",
    "not_in_local_policy": "the listen.toml of {agent}'s listener does not name {agent}: add [agents.{agent}]"
    " there and restart agent-rooms listen",
    "not_wakeable_here": "the listen.toml of {agent}'s listener has wake = false for {agent}",
    "workdir_outside_root": "the workdir listen.toml names for {agent} is not under its workdir_root (a link"
    " leading out of it, say)",
}


# Outcomes of a wake whose CLI never ran: refused or ended before anything was executed.
NEVER_RAN = frozenset(
    {
        Outcome.CLI_NOT_FOUND,
        Outcome.WORKDIR_MISSING,
        Outcome.SANDBOX_UNAVAILABLE,
        Outcome.SANDBOX_REQUIRED,
        Outcome.ROOT_REFUSED,
        Outcome.ENV_UNAVAILABLE,
        Outcome.EXPIRED,
    }
)


# `lost` whose supervisor recorded the end itself (state `failed`): the supervisor was there, the CLI failed.
CLI_FAILED = (
    "the CLI exited with an error that none of its events names; its stderr says what it was"
    " (agent-rooms run log {run_id} --stderr, on the machine that ran it)"
)
# The supervisor records an empty session id when the CLI answered a resume "No conversation found".
SESSION_GONE = (
    "the CLI could not resume the agent's last session (it is not on the machine that ran this wake);"
    " the next wake starts a fresh session"
)


def listener_refusal(outcome: str | None) -> str | None:
    """The reason word of a wake its owner's listener refused by its listen.toml (`withdrawn:<reason>`), else None."""
    head, _, why = (outcome or "").partition(":")
    return why if head == Outcome.WITHDRAWN and why in LISTENER_REFUSALS else None


def reason(info: RunInfo) -> str:
    """In plain words: where a run stands, and why it ended or never started."""
    if info.state in WAITING_STATES:
        if info.state == RunState.WAITING_FOR_LISTENER:
            return "not started: waiting for its owner's listener (agent-rooms listen)"
        return "not started: queued behind a cap or a back-off"
    if info.state not in FINAL_STATES:
        return f"running ({info.state})"
    outcome = info.outcome or ""
    head, _, why = outcome.partition(":")
    refused = listener_refusal(outcome)  # before its CLI was executed
    if refused is not None:
        text = f"withdrawn by its listener: {LISTENER_REFUSALS[refused].format(agent=info.agent)}"
    elif head == Outcome.WITHDRAWN:
        text = f"withdrawn: {why.replace('_', ' ')}"
    elif outcome == Outcome.LOST and info.state == RunState.FAILED:
        text = SESSION_GONE if info.session_id == "" else CLI_FAILED.format(run_id=info.run_id)
    else:
        text = REASONS.get(outcome, outcome or "no reason recorded")
    started = "never started" if outcome in NEVER_RAN or refused is not None or not info.started_at else "ended"
    return f"{info.state}, {started}: {text}"


@click.group("run")
def run_group() -> None:
    """Runs: woken, headless executions of an agent's CLI."""


@run_group.command("list")
@click.option("--owner", help="Only this owner's runs (on a device: always your own).")
@click.option("--all", "every", is_flag=True, help="Every run, page after page (default: the newest 50).")
@json_option
def list_(owner: str | None, every: bool, as_json: bool) -> None:
    """List runs, newest first: state, outcome, and whether each is running or finished."""
    page: RunList = perform("run.list", RunListArgs(owner=owner), as_json=as_json)
    runs = list(page.runs)
    while every and page.has_more:
        page = perform("run.list", RunListArgs(owner=owner, after=page.next_after), as_json=as_json)
        runs += page.runs
    if as_json:
        click.echo(RunList(runs=runs, boundary=page.boundary, notice=page.notice, next_after=page.next_after,
                           has_more=page.has_more).model_dump_json(indent=2))  # fmt: skip
        return
    rows = [
        [r.run_id, r.agent, r.room, r.trigger, r.state, r.outcome or "-", r.ended_at or r.started_at or r.created_at]
        for r in runs
    ]
    click.echo(table(rows, ["RUN_ID", "AGENT", "ROOM", "TRIGGER", "STATE", "OUTCOME", "SINCE"]))
    if page.has_more and not every:
        click.echo("(more: --all)")


@run_group.command("log")
@click.argument("run_id")
@click.option("--stderr", "show_stderr", is_flag=True, help="Show the tail of the CLI's stderr instead.")
@json_option
def log(run_id: str, show_stderr: bool, as_json: bool) -> None:
    """Show RUN_ID's state, why it ended or never started, and the events its CLI printed, or its stderr tail.

    Events and stderr stay, bounded, on the machine that ran the CLI, in its home's run-logs/RUN_ID/: the
    hub's machine for a wake the hub ran, the owner's machine for one their listener ran (DESIGN §9.1).
    Run this there to see them; elsewhere it shows the state and why."""
    info: RunInfo = perform("run.get", RunGet(run_id=run_id), as_json=as_json)
    if as_json:  # the run's record; the logs themselves are files, for people
        emit(info, as_json=True, text=str)
        return
    click.echo(
        table(
            [[info.run_id, info.agent, info.room, info.trigger, info.state, info.outcome or "-"]],
            ["RUN_ID", "AGENT", "ROOM", "TRIGGER", "STATE", "OUTCOME"],
        )
    )
    click.echo(f"status: {reason(info)}")
    # The run's own files, wherever the record came from: a listener keeps them in this machine's home.
    kept = settings().run_logs_dir / info.run_id
    path = kept / ("stderr.log" if show_stderr else "events.jsonl")
    if path.exists():
        click.echo(path.read_text(errors="replace"), nl=False)
    elif info.state in WAITING_STATES or not info.started_at or info.outcome in NEVER_RAN:
        # Not an error: the status line already says why (never started, or not yet).
        click.echo(f"(no {path.name} kept for this run)")
    elif listener_refusal(info.outcome) is not None:
        # Refused by its listener's listen.toml before anything was executed: there is nothing to keep anywhere.
        click.echo(f"(no {path.name}: its listener refused this wake before its CLI ran, so none was kept)")
    elif show_stderr and (kept / "events.jsonl").exists():
        # The run was here (its events are); its stderr is written when the CLI exits.
        click.echo("(no stderr.log for this run: its CLI printed nothing on stderr, or was stopped before it did,"
                   f" by its listener's Ctrl-C or dead-man switch; agent-rooms run log {info.run_id} shows its"
                   " events)")  # fmt: skip
    elif remote(as_json) is not None:
        click.echo(f"(no {path.name} for this run on this machine, in {kept}: it ran elsewhere, on the machine of"
                   " the listener that held the agent then, or on the hub's; run this there)")  # fmt: skip
    else:
        click.echo(f"(no {path.name} for this run in {kept}: a run an owner's listener ran keeps it on that"
                   " owner's machine (run this there), and an ended run's files are purged after"
                   " AGENT_ROOMS_LIMIT_RETENTION_S)")  # fmt: skip
