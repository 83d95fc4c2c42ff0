"""Typed ids: `NewType`s for the ids that are easily swapped (an agent's for its owner's, a room's for a
task's), so the type checker catches a mix-up that SQLite would quietly answer with no rows.

They cost nothing at run time: each is its `str`. Wrap a value where it is first known to be that id (a row
just loaded, a caller just authenticated).
"""

from __future__ import annotations

from typing import NewType

AgentId = NewType("AgentId", str)
OwnerId = NewType("OwnerId", str)
RoomId = NewType("RoomId", str)
TaskId = NewType("TaskId", str)
ProposalId = NewType("ProposalId", str)
GrantId = NewType("GrantId", str)
RunId = NewType("RunId", str)
MessageId = NewType("MessageId", str)
