"""Pydantic models at the edges: tool results and CLI `--json` documents (DESIGN §3.1)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Relation = Literal["self", "same_owner", "cross_owner"]


class AgentRef(BaseModel):
    handle: str
    agent_id: str
    tool: str


class OwnerRef(BaseModel):
    handle: str
    owner_id: str
    verified: bool


class WhoAmI(BaseModel):
    agent: AgentRef
    owner: OwnerRef
    scopes: list[str]
    run_id: str | None
    rooms: int


class RoomSummary(BaseModel):
    room_id: str
    name: str
    member_count: int
    latest_seq: int


class RoomList(BaseModel):
    rooms: list[RoomSummary]


class Member(BaseModel):
    handle: str
    owner: str
    tool: str
    relation: Relation


class RoomDetail(BaseModel):
    room_id: str
    name: str
    created_at: str
    members: list[Member]
    consent_mode: str
    latest_seq: int


class MentionOutcome(BaseModel):
    handle: str
    outcome: Literal["notified", "woken", "queued", "pending_consent", "refused"]
    code: str | None = None
    # For pending_consent: the proposal its owner decides on (list_pending_consents, accept_task).
    proposal_id: str | None = None


class PostedMessage(BaseModel):
    message_id: str
    seq: int
    mentions: list[MentionOutcome]


class Author(BaseModel):
    handle: str
    owner: str
    tool: str


class Message(BaseModel):
    message_id: str
    seq: int
    author: Author
    relation: Relation
    created_at: str
    mentions: list[str]
    reply_to: int | None
    text: str
    flags: list[str]


class MessagePage(BaseModel):
    messages: list[Message]
    next_after: int
    has_more: bool
    boundary: str | None
    notice: str | None


class SharedFile(BaseModel):
    file_id: str
    name: str
    size: int
    sha256: str


class FileInfo(BaseModel):
    file_id: str
    name: str
    size: int
    sha256: str
    media_type: str | None
    author: Author
    relation: Relation
    created_at: str


class FileList(BaseModel):
    files: list[FileInfo]


class FileRange(BaseModel):
    file_id: str
    name: str
    offset: int
    length: int
    size: int
    eof: bool
    encoding: Literal["utf-8", "base64"]
    content: str
    author: Author
    relation: Relation
    flags: list[str]
    boundary: str | None
    notice: str | None


class Invite(BaseModel):
    code: str
    room: str
    expires_at: str
    accept_command: str


class Task(BaseModel):
    task_id: str
    room: str
    room_id: str
    number: int
    title: str
    body: str
    creator: Author
    relation: Relation
    assignee: Author | None
    status: str
    consent_state: str
    proposal_id: str | None
    consent_reason: str | None
    note: str | None
    note_by: Author | None
    created_at: str
    updated_at: str
    flags: list[str]


class TaskView(Task):
    """One task as a tool result: its texts are enveloped like a page's when another owner wrote them."""

    boundary: str | None
    notice: str | None


class WakeRequest(BaseModel):
    """A request by your owner's agents to wake another owner's agent in this room, and where it stands."""

    proposal_id: str
    message_id: str | None
    target: str
    state: str  # pending | accepted | rejected
    reason: str | None
    created_at: str
    decided_at: str | None


class TaskList(BaseModel):
    tasks: list[Task]
    next_after: int
    has_more: bool
    # Newest first, at most 20: a mention that waits for another owner's consent is visible here until decided.
    wake_requests: list[WakeRequest]
    boundary: str | None
    notice: str | None


class ProposerRef(BaseModel):
    agent: str
    owner: str


class Proposal(BaseModel):
    proposal_id: str
    kind: Literal["task", "wake"]
    room: str
    room_id: str
    proposer: ProposerRef
    target: str
    task_id: str | None
    payload: dict[str, object]
    payload_sha256: str
    created_at: str


class ProposalList(BaseModel):
    proposals: list[Proposal]
    has_more: bool
    boundary: str | None
    notice: str | None


class DecisionResult(BaseModel):
    proposal_id: str
    kind: Literal["task", "wake"]
    task_id: str | None
    consent_state: str


class ConsentModeSet(BaseModel):
    room: str
    room_id: str
    owner: str
    mode: str
    collaborator: str | None


# CLI documents (`--json`).


class OwnerInfo(BaseModel):
    owner_id: str
    handle: str
    created_at: str
    verified: bool
    verified_at: str | None
    verified_method: str | None


class OwnerList(BaseModel):
    owners: list[OwnerInfo]


class AgentInfo(BaseModel):
    agent_id: str
    handle: str
    owner: str
    tool: str
    scopes: list[str]
    workdir: str | None
    created_at: str


class AgentList(BaseModel):
    agents: list[AgentInfo]


class AgentEnvList(BaseModel):
    agent: str
    names: list[str]


class IssuedToken(BaseModel):
    token: str
    token_id: str
    agent: str
    expires_at: str


class TokenInfo(BaseModel):
    token_id: str
    agent: str
    created_at: str
    expires_at: str
    status: Literal["active", "expired", "revoked"]


class TokenList(BaseModel):
    tokens: list[TokenInfo]


class InviteAccepted(BaseModel):
    room_id: str
    room: str
    owner: str
    agents: list[str]


class AuditVerdict(BaseModel):
    ok: bool
    rows: int
    first_bad_seq: int | None
    problem: str | None


class GrantInfo(BaseModel):
    grant_id: str
    from_owner: str
    to_owner: str
    created_at: str
    revoked_at: str | None
    active: bool


class GrantList(BaseModel):
    grants: list[GrantInfo]


class RunInfo(BaseModel):
    run_id: str
    agent: str
    room: str
    trigger: Literal["mention", "task", "wake_proposal"]
    cause_id: str
    state: str
    created_at: str
    started_at: str | None
    ended_at: str | None
    outcome: str | None
    stop_signal: str | None
    session_id: str | None
    constrained: bool


class RunList(BaseModel):
    runs: list[RunInfo]


class StoppedRun(BaseModel):
    run_id: str
    stop_signal: Literal["SIGINT", "SIGTERM", "SIGKILL", "none"]
    state: str


class StopResult(BaseModel):
    stopped: list[StoppedRun]
