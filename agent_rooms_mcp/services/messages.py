"""Messages (DESIGN §3): post with mentions, read by seq, long-poll for new ones."""

from __future__ import annotations

import json
import re
import sqlite3

import anyio

from agent_rooms_mcp import audit, content, policy
from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.errors import invalid, too_large
from agent_rooms_mcp.models import MentionOutcome, Message, MessagePage, PostedMessage
from agent_rooms_mcp.principals import Caller, Scope
from agent_rooms_mcp.services.render import notice, render
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store

# ASCII only, exact handles: a look-alike letter ends the match instead of resolving to someone.
_AT_HANDLE = re.compile(r"(?<![A-Za-z0-9_.@-])@([a-z0-9][a-z0-9_-]{0,62})(?![A-Za-z0-9_-])")

_PAGE = (
    "SELECT m.message_id, m.seq, m.text, m.mentions, m.reply_to, m.created_at,"
    " a.agent_id, a.handle, a.tool, a.owner_id, o.handle AS owner_handle"
    " FROM messages m JOIN agents a ON a.agent_id = m.agent_id JOIN owners o ON o.owner_id = a.owner_id"
    " WHERE m.room_id = ? AND m.seq > ? ORDER BY m.seq LIMIT ?"
)


def _within_bytes(rows: list[sqlite3.Row], cap: int) -> int:
    """How many rows fit in one result of at most `cap` text bytes (always at least one): a page ends
    early rather than growing past what a client will take, and `has_more` says so."""
    total = 0
    for i, row in enumerate(rows):
        total += len(row["text"].encode("utf-8", "surrogatepass"))
        if total > cap and i > 0:
            return i
    return len(rows)


class Messages:
    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

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
            room = queries.room_for_member(conn, room_ref, caller.agent_id)
            if reply_to is not None and not 1 <= reply_to <= room["latest_seq"]:
                raise invalid("reply_to", "no message with that seq in this room")
            members = {m["handle"] for m in queries.room_members(conn, room["room_id"])} if wanted else set()
            explicit = set(mentions)
            outcomes = []
            for handle in wanted:
                if handle in members:
                    outcomes.append(MentionOutcome(handle=handle, outcome="notified"))
                elif handle in explicit:
                    # Non-members and unknown handles look alike (DESIGN §3).
                    outcomes.append(MentionOutcome(handle=handle, outcome="refused", code="NOT_FOUND"))
            resolved = [o.handle for o in outcomes if o.outcome == "notified"]
            seq = room["latest_seq"] + 1
            message_id = new_id("msg")
            conn.execute(
                "INSERT INTO messages (message_id, room_id, seq, agent_id, text, mentions, reply_to, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    room["room_id"],
                    seq,
                    caller.agent_id,
                    text,
                    json.dumps(resolved),
                    reply_to,
                    now_utc(),
                ),
            )
            audit.append(
                conn,
                caller.actor,
                "message.post",
                target=room["room_id"],
                detail={"message_id": message_id, "seq": seq, "mentions": len(resolved)},
            )
            return PostedMessage(message_id=message_id, seq=seq, mentions=outcomes)

        posted = await self._store.write(run)
        self._store.notify_changed()
        return posted

    async def read(self, caller: Caller, room_ref: str, after: int | None, limit: int) -> MessagePage:
        policy.require_scope(caller, Scope.READ)

        def run(conn: sqlite3.Connection) -> MessagePage:
            room = queries.room_for_member(conn, room_ref, caller.agent_id)
            start = max(room["latest_seq"] - limit, 0) if after is None else after
            rows = conn.execute(_PAGE, (room["room_id"], start, limit + 1)).fetchall()
            kept = _within_bytes(rows[:limit], self._limits.page_bytes)
            has_more = len(rows) > kept
            rows = rows[:kept]
            rendered, boundary = render(caller, rows, [r["text"] for r in rows])
            messages = [
                Message(
                    message_id=r["message_id"],
                    seq=r["seq"],
                    author=item.author,
                    relation=item.relation,
                    created_at=r["created_at"],
                    mentions=json.loads(r["mentions"]),
                    reply_to=r["reply_to"],
                    text=item.text,
                    flags=item.flags,
                )
                for r, item in zip(rows, rendered, strict=True)
            ]
            next_after = rows[-1]["seq"] if rows else start
            return MessagePage(
                messages=messages,
                next_after=next_after,
                has_more=has_more,
                boundary=boundary,
                notice=notice(boundary),
            )

        return await self._store.read(run)

    async def wait(self, caller: Caller, room_ref: str, after: int, limit: int, timeout_s: float) -> MessagePage:
        """Return as soon as there is a message after `after`, or an empty page at the timeout."""
        with anyio.move_on_after(timeout_s):
            while True:
                page = await self.read(caller, room_ref, after, limit)
                if page.messages:
                    return page
                await self._store.wait_changed(self._limits.long_poll_recheck_s)
        return await self.read(caller, room_ref, after, limit)
