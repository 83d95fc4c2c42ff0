"""Whose words cross (DESIGN §4 "Causers"): the owners behind what an agent writes, the facts about each
of them towards a target's owner, and the payload hash a decision and its wake are bound to.

Shared by consent (judging a proposal), tasks and messages (what they write), and runs (the claim's
re-check), so that all of them load the same facts the same way.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from agent_rooms_mcp import policy
from agent_rooms_mcp.ids import OwnerId
from agent_rooms_mcp.principals import Caller
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.rows import TaskRow, load_causers

Causers = frozenset[OwnerId]  # every owner whose words a message, task, proposal or wake carries


def canonical(payload: dict[str, Any]) -> tuple[str, str]:
    """The payload as stored (sorted keys, no spaces) and the SHA-256 a decision is bound to."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def task_payload(task_id: str, room_id: str, title: str, body: str, assignee_id: str) -> dict[str, Any]:
    """What an owner agrees to when a task reaches its agent: these words, for this agent."""
    return {"task_id": task_id, "room_id": room_id, "title": title, "body": body, "assignee_id": assignee_id}


def task_digest(task: TaskRow, assignee_id: str) -> str:
    """The hash of a task's current words offered to `assignee_id` (the task row's own assignee or not)."""
    return canonical(task_payload(task.task_id, task.room_id, task.title, task.body, assignee_id))[1]


def loads(stored: str | None) -> Causers:
    return load_causers(stored)


def dumps(causers: Iterable[str]) -> str:
    return json.dumps(sorted(set(causers)))


def of_writer(conn: sqlite3.Connection, caller: Caller) -> Causers:
    """Whose words an agent writes: its owner's, and when it writes from a woken run, every owner whose
    words caused that run (invariant 102)."""
    if caller.run_id is None:
        return frozenset({caller.owner_id})
    row = conn.execute("SELECT causers FROM runs WHERE run_id = ?", (caller.run_id,)).fetchone()
    return frozenset({caller.owner_id}) | loads(row["causers"] if row else None)


def others(causers: Causers, owner_id: OwnerId) -> tuple[OwnerId, ...]:
    """The causers other than `owner_id`, in a fixed order: `policy.whose_words_cross`."""
    return policy.whose_words_cross(causers, owner_id)


def standing(
    conn: sqlite3.Connection, room_id: str, target_owner_id: OwnerId, proposer_owner_id: OwnerId
) -> policy.Standing:
    row = queries.consent_mode(conn, room_id, target_owner_id)
    if row is None:
        return policy.Standing()
    joined = queries.owner_joined(conn, room_id, proposer_owner_id)
    return policy.Standing(
        mode=row.mode,
        collaborator_id=row.collaborator_id,
        proposer_trusted_by_room=joined is not None and joined <= row.set_at,
    )


def crossers(
    conn: sqlite3.Connection, room_id: str, target_owner_id: OwnerId, causers: Causers
) -> tuple[policy.Crosser, ...]:
    """The facts `policy.propose` judges for every owner whose words would reach `target_owner_id`."""
    return tuple(
        policy.Crosser(
            owner_id=owner_id,
            grant_id=queries.active_grant(conn, target_owner_id, owner_id),
            verified=queries.owners_verified(conn, target_owner_id, owner_id),
            standing=standing(conn, room_id, target_owner_id, owner_id),
        )
        for owner_id in others(causers, target_owner_id)
    )
