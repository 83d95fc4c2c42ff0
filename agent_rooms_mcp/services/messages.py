"""Messages (DESIGN §3): post with mentions, read by seq, long-poll for new ones."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import cast

from agent_rooms_mcp import audit, content, policy
from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.errors import ErrorCode, RoomsError, invalid, too_large
from agent_rooms_mcp.ids import MessageId, OwnerId, RoomId
from agent_rooms_mcp.models import Author, Mentioned, MentionOutcome, Message, PostedMessage
from agent_rooms_mcp.policy import ConsentState, MentionEffect, ProposalKind
from agent_rooms_mcp.principals import AgentTool, Caller, Scope
from agent_rooms_mcp.results import CHAR_BYTES_MAX, Shape, item_bytes, text_hint
from agent_rooms_mcp.run_states import Trigger, mention_outcome
from agent_rooms_mcp.services import crossing, proposals, runs
from agent_rooms_mcp.services.render import Rendered, cut_page, notice, render
from agent_rooms_mcp.settings import INT_MAX, Limits, WakeSettings
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store
from agent_rooms_mcp.store.rows import MemberAgent

# ASCII only, exact handles: a look-alike letter ends the match instead of resolving to someone.
# A combining mark right after a handle changes how it reads ("@bob-codex\u0301"), so it ends no match.
_AT_HANDLE = re.compile(
    r"(?<![A-Za-z0-9_.@-])@([a-z0-9][a-z0-9_-]{0,62})"
    r"(?![A-Za-z0-9_\-\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f])"
)

_PAGE = (
    "SELECT message_id, seq, agent_id, text, mentions, mention_outcomes, reply_to, created_at"
    " FROM messages WHERE room_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
# A page's writers, each once: a page comes from few of them, and joining every message to its agent and owner
# cost a third of the page's SQL. The foreign keys keep every message's writer in the same snapshot.
_WRITERS = (
    "SELECT a.agent_id, a.handle, a.tool, a.owner_id, o.handle AS owner_handle"
    " FROM agents a JOIN owners o ON o.owner_id = a.owner_id WHERE a.agent_id IN ({})"
)


# What a message adds to a page besides its text, mentions and flags, at its largest (longest handles, ids and
# tool, the largest seqs): measured once with the encoder rather than counted by hand, so read_messages need
# not encode a page an extra time unless it comes near the cap.
_LONGEST_HANDLE = "h" * 63
_MESSAGE_FIXED_BYTES = item_bytes(
    Message(
        message_id=new_id("msg"),
        seq=INT_MAX,
        author=Author(handle=_LONGEST_HANDLE, owner=_LONGEST_HANDLE, tool=max(AgentTool, key=len).value),
        relation="cross_owner",
        created_at=now_utc(),
        mentions=[],
        reply_to=INT_MAX,
        text="",
        flags=[],
    )
)


def _said(
    handle: str,
    outcome: Mentioned,
    code: str | None = None,
    proposal_id: str | None = None,
    run_id: str | None = None,
) -> MentionOutcome:
    """A mention's outcome as the poster reads it: the enum's value in the result's closed list."""
    return MentionOutcome.model_validate(
        {"handle": handle, "outcome": outcome.value, "code": code, "proposal_id": proposal_id, "run_id": run_id}
    )


# A mention with every field empty: what one adds to a page besides its words (see `mentions_hint`).
_MENTION_FIXED_BYTES = item_bytes(MentionOutcome(handle="a", outcome="notified")) + 1


def mentions_hint(mentions: Sequence[Shape]) -> int:
    """A cheap upper bound on what a message's mentions (shaped as `MentionOutcome` dumps) add to a page, as
    `text_hint` is for its text."""
    return sum(
        _MENTION_FIXED_BYTES
        + text_hint([m["handle"], m["outcome"], m["code"] or "", m["proposal_id"] or "", m["run_id"] or ""])
        for m in mentions
    )


# Where each mention of a page's messages stands now: the runs they woke or joined, and the proposals they wait
# on with the run an acceptance made (by `runs_by_cause`). One query for the whole page, whatever its size.
_SETTLED = (
    "SELECT 'run' AS via, run_id AS key, state, outcome, run_id FROM runs WHERE run_id IN ({runs})"
    " UNION ALL SELECT 'proposal', p.proposal_id, p.state, p.wake_outcome, p.wake_code FROM proposals p"
    " WHERE p.proposal_id IN ({props})"
    " UNION ALL SELECT 'accepted', cause_id, state, outcome, run_id FROM runs"
    f" WHERE cause_id IN ({{props}}) AND trigger = '{Trigger.WAKE_PROPOSAL.value}'"
)


def page_hint(messages: Sequence[Shape]) -> int:
    """A cheap upper bound on what these messages (shaped as `Message` dumps) add to a page, so a page far below
    the cap (nearly every one) is not encoded an extra time to measure it: a few sums over the page rather than a
    bound per message."""
    return (
        len(messages) * _MESSAGE_FIXED_BYTES
        + CHAR_BYTES_MAX * sum(len(m["text"]) for m in messages)
        + sum(text_hint(m["flags"]) + mentions_hint(m["mentions"]) for m in messages if m["flags"] or m["mentions"])
    )


@dataclass(frozen=True, slots=True)
class Page:
    """A page of messages built directly in the JSON shape `MessagePage` dumps to (`structured`, sent as it is):
    building 20 `Message` models, each validated, only for the server to dump them again cost more than the rest
    of a read. `MessagePage` stays the tools' schema; tests/test_read_shape.py holds the shape to it, byte for byte."""

    structured: Shape

    @property
    def messages(self) -> list[Shape]:
        return cast(list[Shape], self.structured["messages"])


def _shaped(
    page: Sequence[sqlite3.Row], rendered: Sequence[Rendered], mentions: Sequence[list[MentionOutcome]]
) -> list[Shape]:
    """Each message of `page` as `Message` dumps it (`model_dump(mode="json")`): its fields in the model's order,
    each writer's label dumped once for all their messages."""
    authors: dict[str, Shape] = {}
    return [
        {
            "message_id": message_id,
            "seq": seq,
            "author": authors.get(agent_id) or authors.setdefault(agent_id, item.author.model_dump()),
            "relation": item.relation,
            "created_at": created_at,
            "mentions": [m.model_dump() for m in said] if said else [],
            "reply_to": reply_to,
            "text": item.text,
            "flags": item.flags,
        }
        for (message_id, seq, agent_id, _, _, _, reply_to, created_at), item, said in zip(
            page, rendered, mentions, strict=True
        )
    ]


def _current_mentions(
    conn: sqlite3.Connection, reader: OwnerId, page: Sequence[sqlite3.Row], writers: Sequence[sqlite3.Row]
) -> list[list[MentionOutcome]]:
    """Each message's mentions as they stand now (DESIGN §5 "Receipts that settle"), for the poster's owner;
    to another owner's reader, and for a message from before outcomes were kept (what it woke was not
    recorded with it), each mention reads as `notified` (policy.sees_mention_receipts). `writers[i]` is the
    row of the agent that wrote `page[i]`."""
    posted = [_as_posted(r, w["owner_id"], reader) for r, w in zip(page, writers, strict=True)]
    run_ids = list({m.run_id for ms in posted for m in ms if m.run_id})
    proposal_ids = list({m.proposal_id for ms in posted for m in ms if m.proposal_id})
    if not run_ids and not proposal_ids:
        return posted
    sql = _SETTLED.format(runs=",".join("?" * len(run_ids)), props=",".join("?" * len(proposal_ids)))
    seen: dict[tuple[str, str], sqlite3.Row] = {}
    for row in conn.execute(sql, [*run_ids, *proposal_ids, *proposal_ids]):
        seen[(row["via"], row["key"])] = row
    return [[_settled(m, seen) for m in ms] for ms in posted]


def _as_posted(row: sqlite3.Row, poster: OwnerId, reader: OwnerId) -> list[MentionOutcome]:
    """One message's mentions as kept when it was posted, before any has settled."""
    if row["mention_outcomes"] and policy.sees_mention_receipts(reader, poster):
        return [MentionOutcome.model_validate(o) for o in json.loads(row["mention_outcomes"])]
    if row["mentions"] == "[]":  # most messages mention nobody: no JSON to parse
        return []
    return [MentionOutcome(handle=h, outcome="notified") for h in json.loads(row["mentions"])]


def _settled(said: MentionOutcome, seen: dict[tuple[str, str], sqlite3.Row]) -> MentionOutcome:
    run = seen.get(("run", said.run_id)) if said.run_id else None
    if run is None and said.proposal_id:
        run = seen.get(("accepted", said.proposal_id))
        proposal = seen.get(("proposal", said.proposal_id))
        if run is None and proposal is not None and proposal["state"] != ConsentState.PENDING:
            # Decided without a run: rejected is refused; superseded or withdrawn is withdrawn, saying which.
            if proposal["state"] == ConsentState.REJECTED:
                return said.model_copy(update={"outcome": Mentioned.REFUSED.value, "code": None})
            if proposal["state"] == ConsentState.ACCEPTED and proposal["outcome"] is not None:
                # Accepted, and its wake refused (SPAWN_CAP) or only notified: the proposal row says which
                # (its `outcome` and `run_id` columns here carry the wake's outcome and code).
                return said.model_copy(update={"outcome": proposal["outcome"], "code": proposal["run_id"]})
            return said.model_copy(update={"outcome": "withdrawn", "code": proposal["state"]})
    if run is None:
        return said
    outcome, code = mention_outcome(run["state"], run["outcome"])
    return said.model_copy(update={"outcome": outcome, "code": code, "run_id": run["run_id"]})


def _mention(
    conn: sqlite3.Connection,
    caps: WakeSettings,
    caller: Caller,
    room_id: RoomId,
    member: MemberAgent,
    message_id: str,
    seq: int,
    text: str,
    causers: crossing.Causers,
) -> MentionOutcome:
    """What mentioning one member does. Its own owner's agent that can be woken (it holds `invoke`, its
    tool can be spawned) is woken at once. Mentioning another owner's agent is a request to wake it, judged
    in DESIGN §4's order (the caller's `task` scope, a grant, verified owners, the target's `invoke`), so
    that a stranger learns nothing about the target's scopes; its owner's consent mode then decides
    whether the wake waits as a proposal. Refused or waiting, the message itself is still posted and every
    member reads it. "Another owner" includes every causer of the run that posts (invariant 102): a run
    woken by Alice's words mentioning an agent of its own owner makes a request on Alice's behalf too."""
    handle = member.handle
    others_cross = bool(policy.whose_words_cross(causers, member.owner_id))
    effect = policy.mention_effect(caller.agent_id, member.agent_id, others_cross=others_cross)
    if effect is MentionEffect.NOTIFY:
        return _said(handle, Mentioned.NOTIFIED)
    cause = runs.Cause(Trigger.MENTION, message_id, room_id, caller.agent_id, caller.run_id, causers=causers)
    if effect is MentionEffect.WAKE:
        woke = runs.enqueue(conn, caps, member, cause)
        return _said(handle, Mentioned(woke.outcome), code=woke.code, run_id=woke.run_id)
    try:
        verdict = proposals.judge(conn, caller, room_id, member, wake=True, causers=causers)
    except RoomsError as e:
        return _said(handle, Mentioned.REFUSED, code=e.code.value)
    if not runs.wakes(member):  # a pull-only tool (chat, other): there is nothing to spawn
        return _said(handle, Mentioned.NOTIFIED)
    payload = {"room_id": room_id, "message_id": message_id, "seq": seq, "text": text, "target_id": member.agent_id}
    offer = proposals.Offer(
        kind=ProposalKind.WAKE,
        room_id=room_id,
        target=member,
        payload=payload,
        message_id=MessageId(message_id),
    )
    proposal_id = proposals.record_proposal(conn, caller, offer, verdict)
    if verdict.state == ConsentState.PENDING:
        return _said(handle, Mentioned.PENDING_CONSENT, proposal_id=proposal_id)
    # Accepted at once by the owner's standing mode: woken, constrained, as another owner caused it.
    woke = runs.enqueue(conn, caps, member, replace(cause, proposal_id=proposal_id))
    return _said(handle, Mentioned(woke.outcome), code=woke.code, proposal_id=proposal_id, run_id=woke.run_id)


def _post_detail(
    message_id: str, seq: int, resolved: list[str], outcomes: list[MentionOutcome], proposals: list[str]
) -> dict[str, object]:
    """The audit detail of a post; mention outcomes only when there were mentions (most posts have none,
    and every byte here is hashed into the chain)."""
    detail: dict[str, object] = {"message_id": message_id, "seq": seq, "mentions": len(resolved)}
    if outcomes:
        detail["outcomes"] = {o.handle: o.outcome for o in outcomes}
    if proposals:
        detail["proposals"] = proposals
    return detail


class Messages:
    def __init__(self, store: Store, limits: Limits, caps: WakeSettings) -> None:
        self._store = store
        self._limits = limits
        self._caps = caps
        # wait_for_messages calls in flight, per agent (this process serves them all).
        self._waits: Counter[str] = Counter()

    async def post(
        self, caller: Caller, room_ref: str, text: str, mentions: list[str], reply_to: int | None
    ) -> PostedMessage:
        policy.require_scope(caller, Scope.POST)
        if len(text.encode("utf-8", "surrogatepass")) > self._limits.message_bytes:
            raise too_large("text", self._limits.message_bytes)
        # Mentions follow what readers will see, so hidden characters cannot smuggle one in or out.
        in_text = _AT_HANDLE.findall(content.sanitize(text).text) if "@" in text else []
        wanted = dict.fromkeys([*mentions, *in_text])

        def run(conn: sqlite3.Connection) -> PostedMessage:
            queries.recheck_caller(conn, caller, Scope.POST)
            room = queries.room_for_member(conn, room_ref, caller)
            if reply_to is not None and not 1 <= reply_to <= room.latest_seq:
                raise invalid("reply_to", "no message with that seq in this room")
            members = {m.handle: m for m in queries.room_members(conn, room.room_id)} if wanted else {}
            explicit = set(mentions)
            causers = crossing.of_writer(conn, caller) if wanted else frozenset()
            message_id, seq = new_id("msg"), room.latest_seq + 1
            outcomes, proposals = [], []
            for handle in wanted:
                member = members.get(handle)
                if member is None:
                    if handle in explicit:
                        # Non-members and unknown handles look alike (DESIGN §3).
                        outcomes.append(_said(handle, Mentioned.REFUSED, code="NOT_FOUND"))
                    continue
                outcome = _mention(conn, self._caps, caller, room.room_id, member, message_id, seq, text, causers)
                outcomes.append(outcome)
                if outcome.proposal_id:
                    proposals.append(outcome.proposal_id)
            resolved = [h for h in wanted if h in members]
            # What each member's mention did is kept with the message, so its readers see where it stands later.
            kept = [o.model_dump(exclude_none=True) for o in outcomes if o.handle in members]
            conn.execute(
                "INSERT INTO messages (message_id, room_id, seq, agent_id, text, mentions, reply_to, created_at,"
                " mention_outcomes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    room.room_id,
                    seq,
                    caller.agent_id,
                    text,
                    json.dumps(resolved) if resolved else "[]",  # most posts mention nobody: no encoder call
                    reply_to,
                    now_utc(),
                    json.dumps(kept) if kept else None,
                ),
            )
            audit.append(
                conn,
                caller.actor,
                "message.post",
                target=room.room_id,
                detail=_post_detail(message_id, seq, resolved, outcomes, proposals),
            )
            return PostedMessage(message_id=message_id, seq=seq, mentions=outcomes)

        posted = await self._store.write(run)
        # Only a mention can queue a run or make a proposal: a post that mentions nobody wakes the rooms' waiters
        # alone, not the supervisor (which would look for work such a post cannot make, once per post).
        self._store.notify_changed(pollers=bool(posted.mentions))
        return posted

    async def read(self, caller: Caller, room_ref: str, after: int | None, limit: int) -> Page:
        policy.require_scope(caller, Scope.READ)
        return (await self._store.read(lambda conn: self._page(conn, caller, room_ref, after, limit)))[0]

    def _page(
        self, conn: sqlite3.Connection, caller: Caller, room_ref: str, after: int | None, limit: int
    ) -> tuple[Page, str]:
        """A page of the room after `after` (the latest `limit` without it), and the room's id."""
        room = queries.room_for_member(conn, room_ref, caller)
        start = max(room.latest_seq - limit, 0) if after is None else after
        rows = conn.execute(_PAGE, (room.room_id, start, limit + 1)).fetchall()
        page = rows[:limit]
        # The page by column, in _PAGE's order: a sqlite3.Row finds a column by name comparing it with each.
        _, _, agent_ids, texts, mentioned, outcomes, _, _ = zip(*page, strict=True) if page else ((),) * 8
        ids = list(set(agent_ids))
        # An empty page (every long poll that times out) has no writers to look up.
        found = conn.execute(_WRITERS.format(",".join("?" * len(ids))), ids) if ids else ()
        by_id = {w["agent_id"]: w for w in found}
        writers = [by_id[agent_id] for agent_id in agent_ids]
        rendered, boundary = render(caller, writers, texts)
        # Most pages mention nobody: no mentions to read or settle.
        if any(outcomes) or any(m != "[]" for m in mentioned):
            mentions = _current_mentions(conn, caller.owner_id, page, writers)
        else:
            mentions = [[]] * len(page)
        messages = _shaped(page, rendered, mentions)
        empty = {
            "messages": [],
            "next_after": start,
            "has_more": True,
            "boundary": boundary,
            "notice": notice(boundary),
        }
        bound = page_hint(messages)
        cut = cut_page(self._limits, empty, messages, [m["seq"] for m in messages], len(rows), start, bound)
        kept = {**empty, "messages": messages[: cut.kept], "next_after": cut.next_after, "has_more": cut.has_more}
        return Page(kept), room.room_id

    async def wait(self, caller: Caller, room_ref: str, after: int, limit: int, timeout_s: float) -> Page:
        """Return as soon as there is a message after `after`, or an empty page at the timeout.

        While it waits the call costs nothing: it sleeps until a commit moves its room's latest seq
        (store/watch.py). Before it answers, the credential is checked again in the page's snapshot: a
        token revoked, an agent stopped or a run ended before a message was posted never gets that
        message (invariant 83).
        """
        policy.require_scope(caller, Scope.READ)
        if self._waits[caller.agent_id] >= self._limits.waits_per_agent:
            raise RoomsError(
                ErrorCode.RATE_LIMITED,
                f"this agent already has {self._limits.waits_per_agent} wait_for_messages calls in flight;"
                f" retry after {self._limits.wait_retry_after_ms} ms",
                audit_reason="waits_per_agent",
                retry_after_ms=self._limits.wait_retry_after_ms,
            )
        self._waits[caller.agent_id] += 1
        try:
            # Over at the timeout, or at once when the server stops: an empty page then, as at a timeout.
            with self._store.long_poll(timeout_s):
                while True:
                    page, room_id = await self._checked_read(caller, room_ref, after, limit)
                    if page.messages:
                        return page
                    await self._store.rooms.wait_past(room_id, after)
            return (await self._checked_read(caller, room_ref, after, limit))[0]
        finally:
            self._waits[caller.agent_id] -= 1
            if not self._waits[caller.agent_id]:
                del self._waits[caller.agent_id]

    async def _checked_read(self, caller: Caller, room_ref: str, after: int, limit: int) -> tuple[Page, str]:
        """The page and the room's id, with the credential checked again in the page's own snapshot: a snapshot
        that holds a message holds every commit before it, so a credential ended before the message was posted
        is seen ended there (invariant 83), without a second read transaction for every waiter a post answers."""

        def checked(conn: sqlite3.Connection) -> tuple[Page, str]:
            queries.recheck_caller(conn, caller, Scope.READ)
            return self._page(conn, caller, room_ref, after, limit)

        return await self._store.read(checked)
