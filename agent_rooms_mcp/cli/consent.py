"""`agent-rooms grant` and `agent-rooms consent`: what crosses between owners, decided by the owners."""

from __future__ import annotations

import click

from agent_rooms_mcp.cli.common import emit, json_option, perform, table
from agent_rooms_mcp.content import parse_envelopes
from agent_rooms_mcp.models import ConsentModeSet, DecisionResult, GrantInfo, GrantList, ProposalList
from agent_rooms_mcp.owner_actions import ConsentDecide, ConsentListArgs, ConsentModeArgs, GrantChange, GrantListArgs
from agent_rooms_mcp.policy import ConsentMode
from agent_rooms_mcp.settings import INT_MAX


@click.group()
def grant() -> None:
    """Grants: one owner letting another owner's agents propose work to, and wake, their agents."""


@grant.command("add")
@click.option("--from", "giver", required=True, help="The owner who grants (whose agents receive work).")
@click.option("--to", "taker", required=True, help="The owner whose agents may then propose work.")
@json_option
def grant_add(giver: str, taker: str, as_json: bool) -> None:
    """Let TO's agents propose tasks to FROM's agents and mention them so they would wake. Both owners
    must be identity-verified; FROM's consent mode still decides each request.

    \b
    Example:
        agent-rooms grant add --from bob --to alice
    """
    made: GrantInfo = perform("grant.add", GrantChange(giver=giver, taker=taker), as_json=as_json)
    emit(made, as_json=as_json, text=lambda g: f"{g.from_owner} now grants {g.to_owner} ({g.grant_id})")


@grant.command("revoke")
@click.option("--from", "giver", required=True, help="The owner who granted.")
@click.option("--to", "taker", required=True, help="The owner who was granted.")
@json_option
def grant_revoke(giver: str, taker: str, as_json: bool) -> None:
    """Revoke FROM's grant to TO: from the next call on, their cross-owner requests are refused with
    NO_GRANT, and requests still pending can no longer be accepted (they can still be rejected)."""
    done: GrantInfo = perform("grant.revoke", GrantChange(giver=giver, taker=taker), as_json=as_json)
    emit(done, as_json=as_json, text=lambda g: f"{g.from_owner} no longer grants {g.to_owner}")


@grant.command("list")
@click.option("--owner", "owner_ref", help="Only grants given by or to this owner.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked grants.")
@json_option
def grant_list(owner_ref: str | None, include_revoked: bool, as_json: bool) -> None:
    """List grants (active ones unless --all)."""
    args = GrantListArgs(owner=owner_ref, include_revoked=include_revoked)
    grants: GrantList = perform("grant.list", args, as_json=as_json)
    rows = [[g.from_owner, g.to_owner, g.created_at, g.revoked_at or "active"] for g in grants.grants]
    emit(grants, as_json=as_json, text=lambda _: table(rows, ["FROM", "TO", "CREATED", "REVOKED"]))


@click.group()
def consent() -> None:
    """Consent: each owner's say over work that other owners' agents offer their agents."""


@consent.command("mode")
@click.argument("room_ref", metavar="ROOM")
@click.argument("mode", type=click.Choice([m.value for m in ConsentMode]))
@click.option("--owner", "owner_ref", required=True, help="The owner whose agents the mode covers.")
@click.option("--collaborator", help="The owner trusted by trust_collaborator.")
@json_option
def mode(room_ref: str, mode: str, owner_ref: str, collaborator: str | None, as_json: bool) -> None:
    """Set OWNER's consent mode in ROOM: task_by_task (ask every time, the default), approve_all,
    trust_collaborator (one named owner), or trust_room (the owners in the room now). It applies to
    requests made from now on; pending ones keep waiting.

    \b
    Example:
        agent-rooms consent mode design trust_collaborator --owner bob --collaborator alice
    """
    args = ConsentModeArgs(room=room_ref, mode=mode, owner=owner_ref, collaborator=collaborator)
    done: ConsentModeSet = perform("consent.mode", args, as_json=as_json)
    emit(
        done,
        as_json=as_json,
        text=lambda m: f"{m.owner} in {m.room}: {m.mode}" + (f" ({m.collaborator})" if m.collaborator else ""),
    )


@consent.command("list")
@click.option("--owner", "owner_ref", required=True, help="The owner whose decisions these are.")
@click.option("--room", "room_ref", help="Only this room.")
@click.option("--after", type=click.IntRange(0, INT_MAX), default=0, show_default=True, help="Start after this cursor.")
@json_option
def list_(owner_ref: str, room_ref: str | None, after: int, as_json: bool) -> None:
    """List requests waiting on OWNER's decision, with who asked and the exact payload, oldest first, one
    page at a time: when more wait, the output says so and names the --after that shows the next page."""
    pending: ProposalList = perform(
        "consent.list", ConsentListArgs(owner=owner_ref, room=room_ref, after=after), as_json=as_json
    )

    def text(p: ProposalList) -> str:
        if not p.proposals:
            return "(nothing waits on your decision)" if not after else "(nothing more waits on your decision)"
        blocks = []
        for item in p.proposals:
            words = "\n".join(
                f"    {k}: {plain_words(item.payload[k], p.boundary)}"
                for k in ("title", "body", "text")
                if k in item.payload
            )
            about = f" (task {item.task_id})" if item.task_id else ""
            blocks.append(
                f"{item.proposal_id}  {item.kind}{about} for {item.target} in {item.room}"
                f" from {item.proposer.agent} ({item.proposer.owner}), {item.created_at}\n"
                # Accepting accepts every owner's words it carries, not only the proposer's.
                f"    words of: {', '.join(item.causers)}\n{words}"
            )
        if p.has_more:
            # Nothing is cut silently: the next page is one command away.
            room = f" --room {room_ref}" if room_ref else ""
            blocks.append(f"(more wait: agent-rooms consent list --owner {owner_ref}{room} --after {p.next_after})")
        return "\n".join(blocks)

    emit(pending, as_json=as_json, text=text)


def plain_words(value: object, boundary: str | None) -> str:
    """Another owner's words for a person: out of the envelope that marks them for a model (the payload is
    sanitised either way), each further line indented under its field so no line can pass for the CLI's own."""
    text = str(value)
    if boundary is not None and (inside := parse_envelopes(text, boundary)):
        text = "\n".join(inside)
    return text.replace("\n", "\n      | ")


@consent.command("accept")
@click.argument("ref", metavar="PROPOSAL_OR_TASK")
@click.option("--owner", "owner_ref", required=True, help="You: the owner of the agent it is for.")
@json_option
def accept(ref: str, owner_ref: str, as_json: bool) -> None:
    """Accept a pending request for one of OWNER's agents. Decisions are final."""
    done: DecisionResult = perform("consent.accept", ConsentDecide(ref=ref, owner=owner_ref), as_json=as_json)
    emit(done, as_json=as_json, text=lambda d: f"{d.proposal_id}: {d.consent_state}")


@consent.command("reject")
@click.argument("ref", metavar="PROPOSAL_OR_TASK")
@click.option("--owner", "owner_ref", required=True, help="You: the owner of the agent it is for.")
@click.option("--reason", required=True, help="Why; the proposer sees it on the task.")
@json_option
def reject(ref: str, owner_ref: str, reason: str, as_json: bool) -> None:
    """Reject a pending request for one of OWNER's agents, with a reason. Decisions are final."""
    args = ConsentDecide(ref=ref, owner=owner_ref, reason=reason)
    done: DecisionResult = perform("consent.reject", args, as_json=as_json)
    emit(done, as_json=as_json, text=lambda d: f"{d.proposal_id}: {d.consent_state}")
