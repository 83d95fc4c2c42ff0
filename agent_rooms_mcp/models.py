"""Pydantic models at the edges: tool results and CLI `--json` documents (DESIGN §3.1)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict

from agent_rooms_mcp import run_states

Relation = Literal["self", "same_owner", "cross_owner"]
# DESIGN §7's closed list of run states, stated once in run_states: the `list_runs` filter takes it.
RunState = run_states.RunState


# Every string of a tool result is one of two kinds, said here once (tests/test_free_text.py walks every
# result model and checks each string field against its kind; a string field of neither kind fails it).


@dataclass(frozen=True, slots=True)
class FreeText:
    """Words a principal chose (message and file contents, file names and media types, task titles, bodies,
    notes and reasons, proposal payload texts, run outcomes a CLI reported). They reach a reader only
    through `services.render`: sanitised, and enveloped when another owner chose them."""


@dataclass(frozen=True, slots=True)
class Token:
    """Not free text: ids, handles, enums, codes, hashes, timestamps and the server's own wording. Every
    value has this shape, so nothing can be hidden or said in one."""

    kind: str
    pattern: str


Text = Annotated[str, FreeText()]
Id = Annotated[str, Token("id", r"[a-z]+_[A-Za-z0-9_-]+")]
# Agent and owner handles, and room names: the operator's CLI refuses any other shape (HANDLE_RE), so a
# room name is an identifier like a handle, shown as chosen, never enveloped.
Handle = Annotated[str, Token("handle", r"[a-z0-9][a-z0-9_-]{0,62}")]
Word = Annotated[str, Token("word", r"[A-Za-z][A-Za-z0-9_]*")]  # enum values, codes, scopes, flags, tools
Stamp = Annotated[str, Token("timestamp", r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(Z|[+-][0-9:]+)?")]
Hex = Annotated[str, Token("hex", r"[0-9a-f]+")]  # sha256 digests and envelope boundaries
Wording = Annotated[str, Token("server wording", r"[\x20-\x7e]+")]  # fixed sentences the server writes
# The keys of a proposal's payload that hold the proposer's words; every other key is an id or a number.
PAYLOAD_TEXT_FIELDS = ("title", "body", "text")


class Model(BaseModel):
    """The base of every model here. Each builds its validator and serializer at its first use, not at import: a
    stdio start imports this module for its tools' result types, and lists the tools from their cached schemas
    (tool_cache.py) before any is used (DESIGN §11: cold start)."""

    model_config = ConfigDict(defer_build=True)


class AgentRef(Model):
    handle: Handle
    agent_id: Id
    tool: Word


class OwnerRef(Model):
    handle: Handle
    owner_id: Id
    verified: bool


class WhoAmI(Model):
    agent: AgentRef
    owner: OwnerRef
    scopes: list[Word]
    run_id: Id | None
    rooms: int


class RoomSummary(Model):
    room_id: Id
    name: Handle
    member_count: int
    latest_seq: int


class RoomList(Model):
    rooms: list[RoomSummary]
    # Every list is paged (DESIGN §3): pass `next_after` as `after` while `has_more`.
    next_after: int
    has_more: bool


class Member(Model):
    handle: Handle
    owner: Handle
    tool: Word
    relation: Relation


class RoomDetail(Model):
    room_id: Id
    name: Handle
    created_at: Stamp
    members: list[Member]
    consent_mode: Word
    latest_seq: int
    # The members are paged like any list: pass `next_after` as `after` while `has_more`.
    next_after: int
    has_more: bool


class Mentioned(StrEnum):
    """What mentioning one member did, as services name it; `MentionOutcome.outcome` is its closed list."""

    NOTIFIED = "notified"
    WOKEN = "woken"
    QUEUED = "queued"
    PENDING_CONSENT = "pending_consent"
    REFUSED = "refused"


class MentionOutcome(Model):
    """What mentioning one member did. `post_message` says what it did at once; `read_messages` says where it
    stands now (DESIGN §5 "Receipts that settle"): a wake that ran ends `completed`, `failed` (with the reason
    in `code`), `stopped`, `lost`, `withdrawn` (the reason in `code`) or `expired`. `refused` has its error
    code in `code`; a `queued` wake that waits for its owner's listener has `waiting_for_listener`. `withdrawn`
    with `cross_owner_refused_here`: the agent's owner runs it on their own machine, whose listen.toml has
    `cross_owner = false` for it; only that owner can accept such wakes (`cross_owner = true` there)."""

    handle: Handle
    outcome: Literal[
        "notified", "woken", "queued", "pending_consent", "refused",
        "completed", "failed", "stopped", "lost", "withdrawn", "expired",
    ]  # fmt: skip
    code: Word | None = None
    # For pending_consent: the proposal its owner decides on (list_pending_consents, accept_task).
    proposal_id: Id | None = None
    # The run the mention woke or joined, once there is one (list_runs, `agent-rooms run log`).
    run_id: Id | None = None


class PostedMessage(Model):
    message_id: Id
    seq: int
    mentions: list[MentionOutcome]


class Author(Model):
    handle: Handle
    owner: Handle
    tool: Word


class Message(Model):
    message_id: Id
    seq: int
    author: Author
    relation: Relation
    created_at: Stamp
    mentions: list[MentionOutcome]
    reply_to: int | None
    text: Text
    flags: list[Word]


class MessagePage(Model):
    messages: list[Message]
    next_after: int
    has_more: bool
    boundary: Hex | None
    notice: Wording | None


class SharedFile(Model):
    file_id: Id
    name: Text
    size: int
    sha256: Hex


class FileInfo(Model):
    file_id: Id
    name: Text
    size: int
    sha256: Hex
    media_type: Text | None
    author: Author
    relation: Relation
    created_at: Stamp
    flags: list[Word]


class FileList(Model):
    files: list[FileInfo]
    boundary: Hex | None
    notice: Wording | None
    next_after: int
    has_more: bool


class FileRange(Model):
    file_id: Id
    name: Text
    offset: int
    length: int
    size: int
    eof: bool
    encoding: Literal["utf-8", "base64"]
    content: Text
    author: Author
    relation: Relation
    flags: list[Word]
    boundary: Hex | None
    notice: Wording | None


class Invite(Model):
    """A usable invite, shown once to its owner at the CLI: never a tool result (invariant 106)."""

    invite_id: Id
    code: Id
    room: Handle
    expires_at: Stamp
    accept_command: Wording


class PendingInvite(Model):
    """What `create_invite` returns: an invite waiting for the owner, and how the owner confirms it."""

    invite_id: Id
    room: Handle
    state: Literal["pending_owner"]
    expires_at: Stamp
    confirm_command: Wording


class Task(Model):
    task_id: Id
    room: Handle
    room_id: Id
    number: int
    title: Text
    body: Text
    creator: Author
    relation: Relation
    assignee: Author | None
    status: Word
    consent_state: Word
    proposal_id: Id | None
    consent_reason: Text | None
    note: Text | None
    note_by: Author | None
    created_at: Stamp
    updated_at: Stamp
    flags: list[Word]


class TaskView(Task):
    """One task as a tool result: its texts are enveloped like a page's when another owner wrote them."""

    boundary: Hex | None
    notice: Wording | None


class WakeRequest(Model):
    """A request by your owner's agents to wake another owner's agent in this room, and where it stands."""

    proposal_id: Id
    message_id: Id | None
    target: Handle
    state: Word  # pending | accepted | rejected
    reason: Text | None
    created_at: Stamp
    decided_at: Stamp | None


class TaskList(Model):
    tasks: list[Task]
    next_after: int
    has_more: bool
    # Newest first, at most 20: a mention that waits for another owner's consent is visible here until decided.
    wake_requests: list[WakeRequest]
    boundary: Hex | None
    notice: Wording | None


class ProposerRef(Model):
    agent: Handle
    owner: Handle


class Proposal(Model):
    proposal_id: Id
    kind: Literal["task", "wake"]
    room: Handle
    room_id: Id
    proposer: ProposerRef
    target: Handle
    task_id: Id | None
    # Every owner whose words the proposal carries (the creator of a task handed on, a run's causers):
    # accepting it accepts all of theirs.
    causers: list[Handle]
    payload: dict[str, object]
    payload_sha256: Hex
    created_at: Stamp


class ProposalList(Model):
    proposals: list[Proposal]
    next_after: int
    has_more: bool
    boundary: Hex | None
    notice: Wording | None


class DecisionResult(Model):
    proposal_id: Id
    kind: Literal["task", "wake"]
    task_id: Id | None
    consent_state: Word


class ConsentModeSet(Model):
    room: Handle
    room_id: Id
    owner: Handle
    mode: Word
    collaborator: Handle | None


# CLI documents (`--json`).


class OwnerInfo(Model):
    owner_id: str
    handle: str
    created_at: str
    verified: bool
    verified_at: str | None
    verified_method: str | None
    local: bool  # the hub's own supervisor spawns this owner's agents (DESIGN §5); others wait for a listener


class OwnerList(Model):
    owners: list[OwnerInfo]


class AgentInfo(Model):
    agent_id: str
    handle: str
    owner: str
    tool: str
    scopes: list[str]
    workdir: str | None
    sandbox: bool  # its woken runs run in the sandbox (DESIGN §5); off only by the operator's confirmed choice
    created_at: str


class AgentList(Model):
    agents: list[AgentInfo]


class AgentEnvList(Model):
    agent: str
    names: list[str]


class IssuedToken(Model):
    token: str
    token_id: str
    agent: str
    expires_at: str


class TokenInfo(Model):
    token_id: str
    agent: str
    created_at: str
    expires_at: str
    status: Literal["active", "expired", "revoked"]


class TokenList(Model):
    tokens: list[TokenInfo]


class InviteAccepted(Model):
    room_id: str
    room: str
    owner: str
    agents: list[str]


class AuditVerdict(Model):
    ok: bool
    rows: int
    first_bad_seq: int | None
    problem: str | None
    # With --checkpoint: how many checkpoints the log was held to, and the most rows one of them covers.
    checkpoints: int = 0
    checkpoint_rows: int = 0


class PurgeReport(Model):
    """`agent-rooms purge`: what was (with --dry-run: would be) removed, counted per kind, and what waits."""

    dry_run: bool
    # Archived or ended before this moment is past retention.
    cutoff: str
    removed: dict[str, int]
    # Past retention but kept for now, with why (a run still live, a row its room still counts on).
    deferred: dict[str, int]
    # After rows were removed: whether the file was rewritten (when much of it was free) and the WAL truncated.
    vacuumed: bool
    wal_truncated: bool


class CheckpointPrevious(Model):
    rows: int
    head: str
    digest: str


class AuditCheckpointResult(Model):
    """`audit checkpoint`: what was signed, the token itself, and where it was written."""

    rows: int
    head: str
    at: str
    prev: CheckpointPrevious | None
    token: str
    out: str | None
    kept: str


class CheckStatus(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


class DoctorCheck(Model):
    """One check of `agent-rooms doctor`: `id` is stable (scripts match on it), `fix` says what to do."""

    id: str
    status: CheckStatus
    message: str
    fix: str | None


class DoctorReport(Model):
    ok: bool  # no check failed (a warning leaves it true)
    checks: list[DoctorCheck]
    fixed: list[str] = []  # what `doctor --fix` changed (file modes only), before the checks above ran


class GrantInfo(Model):
    grant_id: str
    from_owner: str
    to_owner: str
    created_at: str
    revoked_at: str | None
    active: bool


class GrantList(Model):
    grants: list[GrantInfo]


class RunInfo(Model):
    run_id: Id
    agent: Handle
    room: Handle
    trigger: Literal["mention", "task", "wake_proposal"]
    cause_id: Id
    state: Word
    created_at: Stamp
    started_at: Stamp | None
    ended_at: Stamp | None
    outcome: Text | None
    stop_signal: Word | None
    session_id: Text | None
    constrained: bool


class RunList(Model):
    runs: list[RunInfo]
    boundary: Hex | None
    notice: Wording | None
    next_after: int
    has_more: bool


class StoppedRun(Model):
    run_id: Id
    stop_signal: run_states.StopSignal
    state: Word


class StopResult(Model):
    stopped: list[StoppedRun]


# Devices (DESIGN §9.1): CLI and owner API results, never tool results.


class ConsoleLink(Model):
    """A one-time console login link (DESIGN §9.2), shown once to whoever asked for it."""

    owner: str
    url: str
    expires_at: str


class Enrollment(Model):
    """A one-time enrollment code, shown once to the operator, with the line the owner runs."""

    owner: str
    code: str
    expires_at: str
    login_command: str


class DeviceLogin(Model):
    """What the hub answers a redeemed code with: the device credential (once) and the key to pin."""

    device_id: str
    owner: str
    name: str
    credential: str
    issuer_kid: str


class HeldElsewhere(Model):
    """An agent another listener of its owner holds now."""

    agent: str
    device: str
    host: str


class Abandoned(Model):
    """A run a restarted listener's former process held, ended `lost`: its CLI, if it still runs there."""

    run_id: str
    pid: int
    pid_start: int


class ListenerHello(Model):
    """What the hub answers a listener's hello with (DESIGN §9.1)."""

    holder: str
    lease_s: float
    held: list[str] = []
    elsewhere: list[HeldElsewhere] = []
    unknown: list[str] = []  # not this owner's agents, or none by that handle
    left_behind: list[Abandoned] = []


class DeviceInfo(Model):
    device_id: str
    owner: str
    name: str
    created_at: str
    last_used_at: str
    status: Literal["active", "expired", "revoked"]


class DeviceList(Model):
    devices: list[DeviceInfo]


class HubIdentity(Model):
    """What a hub says about itself at /owner/v1/hub, before any credential: the key `login` pins."""

    deployment_id: str
    issuer_kid: str
    issuer_key: str = ""  # the public key itself (base64url), whose k4.pid is issuer_kid


class AuditRows(Model):
    """`audit tail`: the latest rows, metadata only."""

    rows: list[dict[str, object]]
    # Handles and room names for the ids in `rows` that the reader may see, for the human form of the rows.
    names: dict[str, str] = {}


# Kill switches (DESIGN §6): what a delete, quarantine or revoke did, each line proven where it can be.


class CredentialReceipt(Model):
    """One credential revoked. `refused` is proven, not assumed: after the revoke committed, the lookup every
    call passes through was run by the credential's hash on a fresh connection, and `answer` is why it now
    refuses (`token_revoked`, `run_ended`, ...); `refused` false means it would still be accepted."""

    token_id: Id  # a device's id for kind `device`
    kind: Literal["agent_token", "run_token", "device"]
    run_id: Id | None
    refused: bool
    answer: Word


class RunReceipt(Model):
    """One run ended. `state` is what the run is now: `stopped` (or `withdrawn`) only once its supervisor
    recorded its end, which it does after every process it started is gone; a run on a listener that has
    not confirmed its end is `stop_pending`, with the listener and when it was last heard from."""

    run_id: Id
    agent: Handle
    state: Word
    stop_signal: run_states.StopSignal
    processes_gone: bool
    listener: Id | None = None
    last_contact: Stamp | None = None


class WithdrawnItem(Model):
    # `membership`: an agent's (id: the agent); `room_membership`: a removed owner's (id: the room);
    # `console_session`: a removed owner's session in the owner console (id: the session).
    kind: Literal["membership", "wake", "proposal", "invite", "grant", "room_membership", "console_session"]
    id: Id
    room: Handle | None = None


class Receipt(Model):
    """What a kill switch did. `proven`: every credential refused and every run's processes gone; false
    means something is still pending (a listener's run) or, for a credential, that the revoke did not hold."""

    action: Literal["agent.delete", "room.quarantine", "token.revoke", "owner.remove"]
    subject_id: Id
    subject: Handle | Id
    at: Stamp
    credentials: list[CredentialReceipt] = []
    runs: list[RunReceipt] = []
    withdrawn: list[WithdrawnItem] = []
    proven: bool


class TokenRevoked(Receipt):
    """`token revoke`'s answer: the token as `token list` shows it, and the receipt."""

    token_id: Id
    agent: Handle
    created_at: Stamp
    expires_at: Stamp
    status: Literal["active", "expired", "revoked"]


class RoomArchive(Model):
    """`room export`: a room's archive for its owners' review (operator only). Message and task texts are
    the archive's point and are given as stored; file contents are not, only their metadata."""

    room_id: Id
    name: Handle
    created_at: Stamp
    quarantined_at: Stamp | None
    owners: list[dict[str, str]]
    members: list[dict[str, str | None]]
    messages: list[dict[str, object]]
    tasks: list[dict[str, object]]
    files: list[dict[str, object]]


class ArchivedMembership(Model):
    room: Handle
    joined_at: Stamp
    ended_at: Stamp | None
    reason: Word | None


class ArchivedToken(Model):
    token_id: Id
    run_id: Id | None
    created_at: Stamp
    expires_at: Stamp
    revoked_at: Stamp | None


class AgentExport(Model):
    """`agent export`: one agent's record for its owner, a deleted (archived) one too: the only place a
    deleted agent still shows, to its owner and the operator alone, until the purge (invariant 49)."""

    agent: AgentInfo
    status: Literal["active", "deleted"]
    deleted_at: str | None
    memberships: list[ArchivedMembership]
    tokens: list[ArchivedToken]


# `agent-rooms status` (DESIGN §9.5): one screen per owner, read through the services.


class OutgoingProposal(Model):
    """A proposal an owner's agent made that waits on another owner's decision."""

    proposal_id: str
    kind: Literal["task", "wake"]
    room: str
    proposer: str
    target: str
    target_owner: str
    created_at: str


class ListenerInfo(Model):
    holder: str
    device: str
    host: str
    started_at: str
    seen_at: str
    agents: list[str]


class OwnerStatus(Model):
    owner: OwnerInfo
    agents: list[AgentInfo]
    runs: list[RunInfo]  # live and queued
    consents_waiting_on_owner: list[Proposal]
    consents_waiting_on_others: list[OutgoingProposal]
    grants: list[GrantInfo]
    devices: list[DeviceInfo]
    listeners: list[ListenerInfo]


class StatusReport(Model):
    owners: list[OwnerStatus]


# Backup and restore (DESIGN §9.5): CLI results, never tool results.


class BackupWritten(Model):
    path: str


class Restored(Model):
    source: str
    kept_credentials: bool
    # How many live credentials of each kind the restore ended, in plain words ("bearer and run tokens": 3).
    revoked: dict[str, int]
    audit_seq: int


def build_all() -> None:
    """Build every model's validator and serializer now. A long-running server (`serve --http`) would rather pay
    this once at its start than in the middle of serving (`make bench`'s count of 100 `whoami` calls once took a
    one-time build of ~40 M instructions, as if each call cost a fifth more)."""
    pending: list[type[Model]] = [Model]
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        if model is not Model:
            model.model_rebuild()
