"""`agent-rooms status`: one screen per owner (DESIGN §9.5), on the hub's machine or an enrolled device."""

from __future__ import annotations

import click

from agent_rooms_mcp.cli.common import emit, json_option, perform, table
from agent_rooms_mcp.models import OwnerStatus, StatusReport
from agent_rooms_mcp.owner_actions import StatusArgs


@click.command("status")
@click.option("--owner", "owner_ref", default=None, help="Only this owner (on a device: always its own).")
@json_option
def status(owner_ref: str | None, as_json: bool) -> None:
    """Each owner's agents with their scopes, live and queued runs, consents waiting both ways, grants,
    devices and listeners.

    \b
    Example:
        agent-rooms status --owner alice
    """
    report: StatusReport = perform("status", StatusArgs(owner=owner_ref), as_json=as_json)
    emit(report, as_json=as_json, text=lambda r: "\n\n".join(_screen(s) for s in r.owners) or "(no owner)")


def _section(title: str, rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return f"{title}: none"
    body = table(rows, header)
    return f"{title}:\n" + "\n".join(f"  {line}" for line in body.splitlines())


def _screen(s: OwnerStatus) -> str:
    o = s.owner
    where = "spawned on this hub" if o.local else "woken by their listener"
    verified = "verified" if o.verified else "not verified"
    agents = [[a.handle, a.tool, ",".join(a.scopes) or "-", "sandbox" if a.sandbox else "NO SANDBOX"] for a in s.agents]
    runs = [[r.run_id, r.agent, r.room, r.state, r.started_at or r.created_at] for r in s.runs]
    waiting_on_owner = [
        [p.proposal_id, p.kind, p.room, f"{p.proposer.agent} ({p.proposer.owner})", p.target]
        for p in s.consents_waiting_on_owner
    ]
    waiting_on_others = [
        [p.proposal_id, p.kind, p.room, p.proposer, f"{p.target} ({p.target_owner})"]
        for p in s.consents_waiting_on_others
    ]
    grants = [[g.from_owner, g.to_owner, g.created_at] for g in s.grants]
    devices = [[d.device_id, d.name, d.status, d.last_used_at] for d in s.devices]
    listeners = [[x.device, x.host, x.seen_at, ", ".join(x.agents) or "-"] for x in s.listeners]
    return "\n".join(
        [
            f"{o.handle} ({verified}; agents {where})",
            _section("agents", agents, ["AGENT", "TOOL", "SCOPES", "SANDBOX"]),
            _section("live and queued runs", runs, ["RUN_ID", "AGENT", "ROOM", "STATE", "SINCE"]),
            _section(
                f"waiting for {o.handle}'s consent", waiting_on_owner, ["PROPOSAL", "KIND", "ROOM", "FROM", "FOR"]
            ),
            _section(
                f"{o.handle}'s agents waiting on others", waiting_on_others, ["PROPOSAL", "KIND", "ROOM", "FROM", "FOR"]
            ),
            _section("grants", grants, ["FROM", "TO", "SINCE"]),
            _section("devices", devices, ["DEVICE", "NAME", "STATUS", "LAST_USED"]),
            _section("listeners", listeners, ["DEVICE", "HOST", "SEEN", "HOLDING"]),
        ]
    )
