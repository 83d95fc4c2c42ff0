"""`agent-rooms run`: woken runs, and what each one's CLI printed."""

from __future__ import annotations

import click

from agent_rooms_mcp.cli.common import Failed, emit, json_option, run, settings, table
from agent_rooms_mcp.models import RunInfo


@click.group("run")
def run_group() -> None:
    """Runs: woken, headless executions of an agent's CLI."""


@run_group.command("log")
@click.argument("run_id")
@click.option("--stderr", "show_stderr", is_flag=True, help="Show the tail of the CLI's stderr instead.")
@json_option
def log(run_id: str, show_stderr: bool, as_json: bool) -> None:
    """Show RUN_ID's state and the events its CLI printed (kept per run, bounded), or its stderr tail."""
    info: RunInfo = run(lambda hub: hub.runs.get(run_id), as_json=as_json)
    if as_json:  # the run's record; the logs themselves are files, for people
        emit(info, as_json=True, text=str)
        return
    path = settings().run_logs_dir / info.run_id / ("stderr.log" if show_stderr else "events.jsonl")
    if not path.exists():
        why = "it never started" if info.ended_at is None else "it never started, or was purged after it ended"
        raise Failed("NOT_FOUND", f"run {run_id} has no {path.name} ({why})", as_json)
    click.echo(
        table(
            [[info.run_id, info.agent, info.room, info.trigger, info.state, info.outcome or "-"]],
            ["RUN_ID", "AGENT", "ROOM", "TRIGGER", "STATE", "OUTCOME"],
        )
    )
    click.echo(path.read_text(errors="replace"), nl=False)
