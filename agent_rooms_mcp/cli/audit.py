"""`agent-rooms audit`: prove the log untouched, or read its latest rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from agent_rooms_mcp import audit as audit_log
from agent_rooms_mcp.cli.common import Failed, json_option, operator, perform, run, settings
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.models import AuditCheckpointResult, AuditRows, AuditVerdict, CheckpointPrevious
from agent_rooms_mcp.owner_actions import AuditTail
from agent_rooms_mcp.services.audit_checkpoints import Held


@click.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also hold the log to the checkpoint(s) in FILE: catches a cut-off tail and a re-chained log.",
)
@json_option
def verify(checkpoint_file: Path | None, as_json: bool) -> None:
    """Check every row's hash chain, and with --checkpoint the rows a signed checkpoint covers; name the
    first bad row and exit 1 if there is one."""
    tokens = None
    if checkpoint_file is not None:
        try:
            tokens = [line.strip() for line in checkpoint_file.read_text(encoding="ascii").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise Failed("INVALID_ARGUMENT", f"--checkpoint {checkpoint_file}: cannot read it ({e})", as_json) from e

    async def check(hub: Hub) -> Held:
        if tokens is None:
            return Held(await hub.store.read(audit_log.verify), 0, 0)
        return await hub.checkpoints.hold(hub.checkpoints.read(tokens, f"--checkpoint {checkpoint_file}"))

    held = run(check, as_json=as_json)
    verdict = held.verdict
    result = AuditVerdict(
        ok=verdict.ok,
        rows=verdict.rows,
        first_bad_seq=verdict.first_bad_seq,
        problem=verdict.problem,
        checkpoints=held.checkpoints,
        checkpoint_rows=held.covered_rows,
    )
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    elif verdict.ok:
        pinned = f"; holds to {held.checkpoints} checkpoint(s), to row {held.covered_rows}" if held.checkpoints else ""
        click.echo(f"ok: {verdict.rows} rows, chain intact{pinned}")
    else:
        click.echo(f"FAILED at seq {verdict.first_bad_seq}: {verdict.problem}", err=True)
    if not verdict.ok:
        sys.exit(1)


@audit.command("checkpoint")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the checkpoint to FILE (keep a copy away from this machine); else it is printed.",
)
@json_option
def checkpoint(out: Path | None, as_json: bool) -> None:
    """Sign the audit log's row count and head hash with the issuer key, extending the previous checkpoint.

    \b
    Keep the checkpoint away from this machine, then later:
        agent-rooms audit verify --checkpoint FILE
    """
    issued = run(lambda hub: hub.checkpoints.issue(operator()), as_json=as_json)
    c = issued.checkpoint
    if out is not None:
        try:
            out.write_text(issued.token + "\n", encoding="ascii")
        except OSError as e:
            raise Failed(
                "INVALID_ARGUMENT", f"--out {out}: {e.strerror}; the hub keeps a copy in {_kept()}", as_json
            ) from e
    prev = None if c.prev is None else CheckpointPrevious(rows=c.prev.rows, head=c.prev.head, digest=c.prev.digest)
    result = AuditCheckpointResult(
        rows=c.rows, head=c.head, at=c.at, prev=prev, token=issued.token, out=str(out) if out else None,
        kept=str(_kept()),
    )  # fmt: skip
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    extends = f", extending the checkpoint of row {c.prev.rows}" if c.prev else ", the first of its series"
    summary = f"checkpoint: {c.rows} rows, head {c.head[:16]}…{extends}"
    if out is not None:
        click.echo(f"{summary}; written to {out}")
    else:
        # The token alone on stdout, so `agent-rooms audit checkpoint > FILE` keeps exactly the checkpoint.
        click.echo(summary, err=True)
        click.echo(issued.token)


def _kept() -> Path:
    return settings().audit_checkpoints_path


@audit.command("tail")
@click.option("-n", "count", default=20, show_default=True, type=click.IntRange(1, 10_000))
@json_option
def tail(count: int, as_json: bool) -> None:
    """Show the latest audit rows (metadata only: never bodies or secrets), with handles and room names in
    place of ids; --json keeps the rows as stored."""
    tail: AuditRows = perform("audit.tail", AuditTail(count=count), as_json=as_json)
    if as_json:
        click.echo(json.dumps(tail.rows, indent=2))
        return

    def name(value: object) -> str:
        return tail.names.get(value, str(value)) if isinstance(value, str) else "-"

    for r in tail.rows:
        who = f"{r['actor_kind']} {name(r['actor_id'])}" + (f" via {r['via']}" if r.get("via") else "")
        detail = r["detail"]
        if isinstance(detail, dict) and audit_log.ON_BEHALF_OF in detail:
            who += f" for {name(detail[audit_log.ON_BEHALF_OF])}"
        why = f" ({r['reason']})" if r["reason"] else ""
        when = str(r["ts"])[:19].replace("T", " ")  # to the second, UTC, as a person reads it
        click.echo(f"{r['seq']:>6} {when} {who}: {r['action']} {name(r['target'])} {r['outcome']}{why}")
