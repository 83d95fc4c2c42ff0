"""`agent-rooms room` and `agent-rooms invite`: rooms, their members, and one-time invites."""

from __future__ import annotations

from pathlib import Path

import click

from agent_rooms_mcp.cli.common import (
    confirm_or_refuse,
    emit,
    emit_receipt,
    json_option,
    operator,
    parse_duration,
    perform,
    refuse_on_device,
    run,
    table,
)
from agent_rooms_mcp.home import write_private_file
from agent_rooms_mcp.models import Invite, InviteAccepted, Receipt, RoomArchive, RoomList, RoomSummary
from agent_rooms_mcp.owner_actions import InviteAccept, InviteConfirm, InviteCreate, NoArgs, RoomAdd, RoomCreate


def _agents(count: int) -> str:
    return f"{count} agent" if count == 1 else f"{count} agents"


@click.group()
def room() -> None:
    """Rooms: private spaces where member agents talk and share files."""


@room.command("create")
@click.argument("name")
@click.option("--owner", "owner_ref", required=True, help="The owner who creates it (a member from the start).")
@click.option("--agent", "agents", multiple=True, help="An agent of that owner to add; repeat for more.")
@json_option
def create(name: str, owner_ref: str, agents: tuple[str, ...], as_json: bool) -> None:
    """Create room NAME for OWNER, with OWNER's named agents as members.

    \b
    Example:
        agent-rooms room create design --owner alice --agent alice-claude --agent alice-codex
    """
    args = RoomCreate(name=name, owner=owner_ref, agents=list(agents))
    made: RoomSummary = perform("room.create", args, as_json=as_json)
    emit(made, as_json=as_json, text=lambda r: f"created room {r.name} ({r.room_id}) with {_agents(r.member_count)}")


@room.command("add")
@click.argument("room_ref", metavar="ROOM")
@click.option("--agent", "agent_ref", required=True, help="An agent of an owner already in the room.")
@json_option
def add(room_ref: str, agent_ref: str, as_json: bool) -> None:
    """Add one of a member owner's own agents to ROOM."""
    done: RoomSummary = perform("room.add", RoomAdd(room=room_ref, agent=agent_ref), as_json=as_json)
    emit(done, as_json=as_json, text=lambda r: f"{agent_ref} is in {r.name} ({_agents(r.member_count)})")


@room.command("remove")
@click.argument("room_ref", metavar="ROOM")
@click.option("--agent", "agent_ref", required=True, help="The agent to take out of the room.")
@json_option
def remove(room_ref: str, agent_ref: str, as_json: bool) -> None:
    """Remove an agent from ROOM; from its next call on it sees nothing of the room."""
    done: RoomSummary = run(lambda hub: hub.rooms.remove_agent(operator(), room_ref, agent_ref), as_json=as_json)
    emit(done, as_json=as_json, text=lambda r: f"{agent_ref} removed from {r.name} ({_agents(r.member_count)} left)")


@room.command("quarantine")
@click.argument("room_ref", metavar="ROOM")
@click.option("--yes", is_flag=True, help="Confirm without asking.")
@json_option
def quarantine(room_ref: str, yes: bool, as_json: bool) -> None:
    """Quarantine ROOM (an operator action): its runs stopped, its run tokens revoked, every agent
    membership ended, its waiting wakes, pending proposals and invites withdrawn; from then on it answers
    NOT_FOUND to everyone, like a room that never existed. Prints a receipt. `room export` still reads it.

    \b
    Example:
        agent-rooms room quarantine design --yes
    """
    refuse_on_device(as_json)
    confirm_or_refuse(f"Quarantine room {room_ref}, stopping its runs and ending every membership?", yes)
    done: Receipt = run(lambda hub: hub.containment.quarantine_room(operator(), room_ref), as_json=as_json)
    emit_receipt(done, as_json=as_json)


@room.command("export")
@click.argument("room_ref", metavar="ROOM")
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), help="Write here, not to stdout.")
def export(room_ref: str, out: str | None) -> None:
    """Write ROOM's archive as JSON (an operator action, quarantined rooms too): its owners, members,
    messages, tasks and files' metadata, for the owners' review. The file is made readable by you alone."""
    archive: RoomArchive = run(lambda hub: hub.containment.export_room(room_ref))
    text = archive.model_dump_json(indent=2)
    if out is None:
        click.echo(text)
        return
    write_private_file(Path(out), (text + "\n").encode())
    click.echo(f"wrote {out}", err=True)


@room.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List every room on this hub (the operator sees them all)."""
    rooms: RoomList = perform("room.list", NoArgs(), as_json=as_json)
    rows = [[r.name, r.room_id, str(r.member_count), str(r.latest_seq)] for r in rooms.rooms]
    emit(rooms, as_json=as_json, text=lambda _: table(rows, ["NAME", "ROOM_ID", "AGENTS", "LATEST_SEQ"]))


@click.group()
def invite() -> None:
    """One-time invites that bring another owner into a room."""


@invite.command("create")
@click.argument("room_ref", metavar="ROOM")
@click.option("--by", "owner_ref", required=True, help="An owner already in the room.")
@click.option("--ttl", default="24h", show_default=True, help="Lifetime: 60s up to 7d.")
@json_option
def create_invite(room_ref: str, owner_ref: str, ttl: str, as_json: bool) -> None:
    """Create a one-time invite code for ROOM (shown once).

    \b
    Example:
        agent-rooms invite create design --by alice --ttl 1h
    """
    seconds = parse_duration(ttl)
    made: Invite = perform("invite.create", InviteCreate(room=room_ref, by=owner_ref, ttl_s=seconds), as_json=as_json)
    _show_code(made, as_json)


@invite.command("confirm")
@click.argument("invite_id")
@click.option("--owner", "owner_ref", help="The owner whose agent proposed it (checked when given).")
@json_option
def confirm(invite_id: str, owner_ref: str | None, as_json: bool) -> None:
    """Confirm an invite one of your agents proposed with create_invite; prints its code (shown once).

    \b
    Example:
        agent-rooms invite confirm invite_... --owner alice
    """
    made: Invite = perform("invite.confirm", InviteConfirm(invite_id=invite_id, owner=owner_ref), as_json=as_json)
    _show_code(made, as_json)


def _show_code(made: Invite, as_json: bool) -> None:
    """The code once, and the line the invitee runs."""
    emit(
        made,
        as_json=as_json,
        text=lambda i: f"{i.code}\nexpires {i.expires_at}; the invitee runs:\n  {i.accept_command}",
    )


@invite.command("accept")
@click.argument("code")
@click.option("--owner", "owner_ref", required=True, help="You: the owner joining the room.")
@click.option("--agent", "agents", multiple=True, help="One of your agents to bring in; repeat for more.")
@json_option
def accept(code: str, owner_ref: str, agents: tuple[str, ...], as_json: bool) -> None:
    """Accept invite CODE as OWNER, bringing OWNER's named agents into the room.

    \b
    Example:
        agent-rooms invite accept inv_... --owner bob --agent bob-claude
    """
    args = InviteAccept(code=code, owner=owner_ref, agents=list(agents))
    done: InviteAccepted = perform("invite.accept", args, as_json=as_json)
    emit(done, as_json=as_json, text=lambda a: f"{a.owner} joined {a.room} with {', '.join(a.agents) or 'no agents'}")
