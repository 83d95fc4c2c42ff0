"""`agent-rooms backup FILE` and `restore FILE`: the hub's database, copied while it serves and put back."""

from __future__ import annotations

from pathlib import Path

import click

from agent_rooms_mcp.cli.common import (
    Failed,
    confirm_or_refuse,
    emit,
    json_option,
    operator,
    refuse_on_device,
    settings,
)
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.models import BackupWritten, Restored
from agent_rooms_mcp.services import backups
from agent_rooms_mcp.store.backup import BackupRefused


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def backup(file: Path, as_json: bool) -> None:
    """Copy the hub's database to FILE (a new file, 0600), consistent while the hub serves. Refused into a
    directory other users can read."""
    refuse_on_device(as_json)
    configure_logging()  # stderr: stdout carries the result
    try:
        written = backups.backup(settings(), file)
    except BackupRefused as e:
        raise Failed(e.code, str(e), as_json) from e
    emit(BackupWritten(path=str(written)), as_json=as_json, text=lambda r: f"backup written to {r.path} (0600)")


@click.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--keep-credentials",
    is_flag=True,
    help="Keep the tokens, device credentials and codes that were live at the backup (default: revoke them all).",
)
@click.option("--yes", is_flag=True, help="Replace the database without asking.")
@json_option
def restore(file: Path, keep_credentials: bool, yes: bool, as_json: bool) -> None:
    """Replace the hub's database with the backup FILE. Refused while a hub or any agent-rooms process has the
    database open. Every credential in the restored database is revoked (agents need new tokens, devices log
    in again) unless --keep-credentials; the restore is audited."""
    refuse_on_device(as_json)
    configure_logging()  # stderr: stdout carries the result
    here = settings()
    confirm_or_refuse(f"Replace the database in {here.home} with {file}?", yes)
    try:
        done = backups.restore(here, file, operator(), keep_credentials=keep_credentials)
    except BackupRefused as e:
        raise Failed(e.code, str(e), as_json) from e
    emit(done, as_json=as_json, text=_restored_text)


def _restored_text(r: Restored) -> str:
    lines = [f"restored {r.source} (audit row {r.audit_seq})"]
    if r.kept_credentials:
        lines.append("credentials kept as they were at the backup (--keep-credentials)")
    else:
        lines += [f"  revoked {n} {what}" for what, n in r.revoked.items()]
        lines.append("issue new tokens (agent-rooms connect AGENT --new-token); devices log in again")
    return "\n".join(lines)
