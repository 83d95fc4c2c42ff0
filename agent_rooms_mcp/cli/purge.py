"""`agent-rooms purge`: remove what is past retention now, rather than wait for the serving hub's own purge."""

from __future__ import annotations

import click

from agent_rooms_mcp.cli.common import emit, json_option, operator, run
from agent_rooms_mcp.models import PurgeReport
from agent_rooms_mcp.services.purge import ROW_KINDS


@click.command()
@click.option("--dry-run", is_flag=True, help="Count what would be removed; change nothing.")
@json_option
def purge(dry_run: bool, as_json: bool) -> None:
    """Remove archived agents and rooms, and ended runs' directories and logs, once past retention (30 days).

    Never audit rows. Idempotent: a second purge finds nothing left to remove.
    """
    report = run(lambda hub: hub.purge.run(operator(), dry_run=dry_run), as_json=as_json)
    emit(report, as_json=as_json, text=_text)


def _text(report: PurgeReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    found = [f"{n} {kind}" for kind, n in report.removed.items() if n]
    lines = [f"{verb} (archived or ended before {report.cutoff}): " + (", ".join(found) or "nothing")]
    if report.deferred:
        lines.append("kept for now: " + ", ".join(f"{n} {why}" for why, n in report.deferred.items()))
    if any(report.removed[k] for k in ROW_KINDS):
        wal = "truncated" if report.wal_truncated else "NOT truncated: another process was reading; purge again"
        lines.append(f"database {'vacuumed, ' if report.vacuumed else ''}WAL {wal}")
    return "\n".join(lines)
