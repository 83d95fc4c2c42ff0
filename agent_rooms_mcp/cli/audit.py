"""`agent-rooms audit`: prove the log untouched, or read its latest rows."""

from __future__ import annotations

import json
import sys

import click

from agent_rooms_mcp import audit as audit_log
from agent_rooms_mcp.cli.common import json_option, perform, run
from agent_rooms_mcp.models import AuditVerdict
from agent_rooms_mcp.owner_actions import AuditTail


@click.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@json_option
def verify(as_json: bool) -> None:
    """Check every row's hash chain; name the first bad row and exit 1 if there is one."""
    verdict = run(lambda hub: hub.store.read(audit_log.verify), as_json=as_json)
    result = AuditVerdict(
        ok=verdict.ok, rows=verdict.rows, first_bad_seq=verdict.first_bad_seq, problem=verdict.problem
    )
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    elif verdict.ok:
        click.echo(f"ok: {verdict.rows} rows, chain intact")
    else:
        click.echo(f"FAILED at seq {verdict.first_bad_seq}: {verdict.problem}", err=True)
    if not verdict.ok:
        sys.exit(1)


@audit.command("tail")
@click.option("-n", "count", default=20, show_default=True, type=click.IntRange(1, 10_000))
@json_option
def tail(count: int, as_json: bool) -> None:
    """Show the latest audit rows (metadata only: never bodies or secrets)."""
    rows = perform("audit.tail", AuditTail(count=count), as_json=as_json).rows
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        who = f"{r['actor_kind']}:{r['actor_id'] or '-'}" + (f" via {r['via']}" if r.get("via") else "")
        if audit_log.ON_BEHALF_OF in r["detail"]:
            who += f" for {r['detail'][audit_log.ON_BEHALF_OF]}"
        why = f" ({r['reason']})" if r["reason"] else ""
        click.echo(f"{r['seq']:>6} {r['ts']} {who} {r['action']} {r['target'] or '-'} {r['outcome']}{why}")
