"""The consent rules as tables (STYLE P13): one row per rule, rows where rule order decides the code,
and default-deny rows. Pure functions, no database."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent_rooms_mcp import policy
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.ids import OwnerId
from agent_rooms_mcp.policy import (
    ConsentMode,
    ConsentState,
    CredentialNow,
    CrossOwner,
    Decision,
    GrantRequest,
    MentionEffect,
    ProposalState,
    Standing,
    TaskAction,
    TaskStatus,
)
from agent_rooms_mcp.policy import ProposalState as PS
from agent_rooms_mcp.principals import AgentTool, Caller, Scope
from agent_rooms_mcp.run_states import RunState

ALICE = Caller(
    agent_id="agt_alice",
    handle="alice-claude",
    tool=AgentTool.CLAUDE,
    owner_id="own_alice",
    owner_handle="alice",
    owner_verified=True,
    scopes=frozenset({Scope.READ, Scope.POST, Scope.TASK}),
    token_id="tok_alice",
)
INVOKE = frozenset({Scope.READ, Scope.INVOKE})
ALICE_WORDS = policy.Crosser(owner_id="own_alice", grant_id="grant_bob_alice", verified=True, standing=Standing())
BASE = CrossOwner(actor=ALICE, target_owner_id="own_bob", target_scopes=INVOKE, crossers=(ALICE_WORDS,))
NO_TASK = replace(ALICE, scopes=frozenset({Scope.READ, Scope.POST}))


def alice(**facts: object) -> CrossOwner:
    """BASE with alice's words crossing on other facts: no grant, unverified, another standing."""
    return replace(BASE, crossers=(replace(ALICE_WORDS, **facts),))


# Carol, whom bob trusts, hands on alice's task: both owners' words cross to bob.
CAROL_WORDS = policy.Crosser(
    owner_id="own_carol",
    grant_id="grant_bob_carol",
    verified=True,
    standing=Standing(ConsentMode.TRUST_COLLABORATOR, "own_carol"),
)
TRUSTS_CAROL = Standing(ConsentMode.TRUST_COLLABORATOR, "own_carol")

PROPOSE = [
    pytest.param(replace(BASE, target_owner_id="own_alice", crossers=()), False, ConsentState.AUTO, id="same-owner"),
    pytest.param(BASE, False, ConsentState.PENDING, id="task_by_task-starts-pending"),
    pytest.param(replace(BASE, actor=NO_TASK), False, ErrorCode.FORBIDDEN_SCOPE, id="no-task-scope"),
    pytest.param(replace(alice(grant_id=None), actor=NO_TASK), False, ErrorCode.FORBIDDEN_SCOPE, id="scope-first"),
    pytest.param(alice(grant_id=None), False, ErrorCode.NO_GRANT, id="no-grant"),
    pytest.param(alice(grant_id=None, verified=False), False, ErrorCode.NO_GRANT, id="grant-first"),
    pytest.param(alice(verified=False), False, ErrorCode.IDENTITY_UNVERIFIED, id="unverified"),
    pytest.param(
        replace(BASE, target_scopes=frozenset({Scope.READ})), False, ConsentState.PENDING, id="task-no-invoke"
    ),
    pytest.param(
        replace(BASE, target_scopes=frozenset({Scope.READ})), True, ErrorCode.FORBIDDEN_SCOPE, id="wake-no-invoke"
    ),
    pytest.param(
        replace(alice(verified=False), target_scopes=frozenset()),
        True,
        ErrorCode.IDENTITY_UNVERIFIED,
        id="identity-before-invoke",
    ),
    pytest.param(BASE, True, ConsentState.PENDING, id="wake-pending"),
    pytest.param(alice(standing=Standing(ConsentMode.APPROVE_ALL)), True, ConsentState.ACCEPTED, id="approve_all"),
    pytest.param(
        alice(standing=Standing(ConsentMode.TRUST_COLLABORATOR, "own_alice")),
        False,
        ConsentState.ACCEPTED,
        id="trusted-collaborator",
    ),
    pytest.param(alice(standing=TRUSTS_CAROL), False, ConsentState.PENDING, id="other-collaborator"),
    pytest.param(
        alice(standing=Standing(ConsentMode.TRUST_ROOM, proposer_trusted_by_room=True)),
        False,
        ConsentState.ACCEPTED,
        id="trust_room-member-before",
    ),
    pytest.param(
        alice(standing=Standing(ConsentMode.TRUST_ROOM)), False, ConsentState.PENDING, id="trust_room-joined-after"
    ),
    pytest.param(
        alice(grant_id=None, standing=Standing(ConsentMode.APPROVE_ALL)),
        False,
        ErrorCode.NO_GRANT,
        id="no-mode-skips-the-grant",
    ),
    # Invariant 78: every owner whose words cross is judged, not only the one handing the task on.
    pytest.param(
        replace(BASE, crossers=(replace(ALICE_WORDS, grant_id=None, standing=TRUSTS_CAROL), CAROL_WORDS)),
        True,
        ErrorCode.NO_GRANT,
        id="handed-on-needs-the-creators-grant",
    ),
    pytest.param(
        replace(BASE, crossers=(replace(ALICE_WORDS, standing=TRUSTS_CAROL), CAROL_WORDS)),
        True,
        ConsentState.PENDING,
        id="handed-on-the-strictest-mode-wins",
    ),
    pytest.param(
        replace(BASE, crossers=(replace(ALICE_WORDS, verified=False, standing=TRUSTS_CAROL), CAROL_WORDS)),
        False,
        ErrorCode.IDENTITY_UNVERIFIED,
        id="handed-on-needs-the-creator-verified",
    ),
]


def outcome(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except RoomsError as e:
        return e.code


@pytest.mark.invariant(23, 24, 41, 42, 78)
@pytest.mark.parametrize("facts, wake, expected", PROPOSE)
def test_propose(facts: CrossOwner, wake: bool, expected: object) -> None:
    assert outcome(lambda: policy.propose(facts, wake=wake)) == expected


DECISION = Decision(
    decider_owner_id="own_bob",
    proposal_state=ProposalState.PENDING,
    proposer_owner_id="own_alice",
    target_owner_id="own_bob",
    target_scopes=INVOKE,
    wake=False,
    grant_active=True,
    owners_verified=True,
)

DECIDE = [
    pytest.param(DECISION, True, ConsentState.ACCEPTED, id="accept"),
    pytest.param(DECISION, False, ConsentState.REJECTED, id="reject"),
    pytest.param(replace(DECISION, decider_owner_id="own_alice"), True, ErrorCode.FORBIDDEN_SCOPE, id="proposer-owner"),
    pytest.param(
        replace(DECISION, decider_owner_id="own_carol", proposal_state=ProposalState.ACCEPTED),
        True,
        ErrorCode.FORBIDDEN_SCOPE,
        id="owner-before-state",
    ),
    pytest.param(replace(DECISION, proposal_state=PS.ACCEPTED), True, ErrorCode.CONFLICT, id="final-accepted"),
    pytest.param(replace(DECISION, proposal_state=PS.REJECTED), False, ErrorCode.CONFLICT, id="final-rejected"),
    pytest.param(replace(DECISION, proposal_state=PS.SUPERSEDED), True, ErrorCode.CONFLICT, id="superseded"),
    pytest.param(replace(DECISION, proposal_state=PS.WITHDRAWN), False, ErrorCode.CONFLICT, id="withdrawn"),
    pytest.param(replace(DECISION, grant_active=False), True, ErrorCode.NO_GRANT, id="grant-revoked"),
    pytest.param(replace(DECISION, grant_active=False), False, ConsentState.REJECTED, id="reject-without-grant"),
    pytest.param(replace(DECISION, owners_verified=False), True, ErrorCode.IDENTITY_UNVERIFIED, id="unverified"),
    pytest.param(
        replace(DECISION, wake=True, target_scopes=frozenset()), True, ErrorCode.FORBIDDEN_SCOPE, id="wake-lost-invoke"
    ),
    pytest.param(replace(DECISION, wake=True), True, ConsentState.ACCEPTED, id="wake"),
]


@pytest.mark.invariant(25, 43, 44)
@pytest.mark.parametrize("facts, accept, expected", DECIDE)
def test_decide(facts: Decision, accept: bool, expected: object) -> None:
    assert outcome(lambda: policy.decide(facts, accept=accept)) == expected


BOB = replace(ALICE, agent_id="agt_bob", owner_id="own_bob", handle="bob-claude")
OFFERED = TaskAction(
    actor=BOB,
    creator_id="agt_alice",
    assignee_id="agt_bob",
    status=TaskStatus.OPEN,
    consent_state=ConsentState.ACCEPTED,
)
WORKING, DONE, CANCELLED, OPEN = TaskStatus.IN_PROGRESS, TaskStatus.DONE, TaskStatus.CANCELLED, TaskStatus.OPEN

ACT = [
    pytest.param(OFFERED, WORKING, False, None, id="assignee-starts"),
    pytest.param(replace(OFFERED, actor=ALICE), CANCELLED, True, None, id="creator-edits-and-cancels"),
    pytest.param(
        replace(OFFERED, consent_state=ConsentState.PENDING), WORKING, False, ErrorCode.CONSENT_PENDING, id="pending"
    ),
    pytest.param(
        replace(OFFERED, consent_state=ConsentState.REJECTED), WORKING, False, ErrorCode.CONFLICT, id="rejected"
    ),
    pytest.param(
        replace(OFFERED, actor=ALICE, consent_state=ConsentState.PENDING),
        CANCELLED,
        False,
        None,
        id="creator-cancels-pending",
    ),
    pytest.param(OFFERED, None, True, ErrorCode.FORBIDDEN_SCOPE, id="assignee-cannot-edit"),
    pytest.param(replace(OFFERED, assignee_id=None), WORKING, False, ErrorCode.FORBIDDEN_SCOPE, id="stranger"),
    pytest.param(
        replace(OFFERED, actor=replace(BOB, scopes=frozenset({Scope.READ}))),
        WORKING,
        False,
        ErrorCode.FORBIDDEN_SCOPE,
        id="no-task-scope",
    ),
    pytest.param(replace(OFFERED, status=DONE), OPEN, False, ErrorCode.CONFLICT, id="done-is-final"),
    pytest.param(replace(OFFERED, status=CANCELLED), None, False, ErrorCode.CONFLICT, id="cancelled-is-final"),
    pytest.param(replace(OFFERED, status=WORKING), OPEN, False, None, id="hand-back"),
    pytest.param(replace(OFFERED, status=WORKING), DONE, False, None, id="finish"),
    pytest.param(OFFERED, DONE, False, None, id="open-to-done"),
    pytest.param(replace(OFFERED, status=WORKING), WORKING, False, ErrorCode.CONFLICT, id="no-self-transition"),
]


@pytest.mark.parametrize("facts, status, edits, expected", ACT)
def test_act_on_task(facts: TaskAction, status: TaskStatus | None, edits: bool, expected: ErrorCode | None) -> None:
    assert outcome(lambda: policy.act_on_task(facts, new_status=status, edits=edits)) == expected


# --- who decides, who sees a proposal, what a mention does, whose words cross ------------------------------------

RUN = replace(ALICE, scopes=frozenset({Scope.READ, Scope.CONSENT}), run_id="run_1", run_room_id="room_1")
DECIDER = replace(ALICE, scopes=frozenset({Scope.READ, Scope.CONSENT}))

MAY_DECIDE = [
    pytest.param(DECIDER, None, id="agent-with-consent"),
    pytest.param(ALICE, ErrorCode.FORBIDDEN_SCOPE, id="no-consent-scope"),
    # A run never decides, even if its token somehow held `consent`: its words would consent to themselves.
    pytest.param(RUN, ErrorCode.FORBIDDEN_SCOPE, id="run-never-decides"),
]


@pytest.mark.parametrize("caller, expected", MAY_DECIDE)
def test_may_decide(caller: Caller, expected: ErrorCode | None) -> None:
    assert outcome(lambda: policy.may_decide(caller)) == expected


SEES = [
    pytest.param("own_bob", "own_bob", False, True, id="target-owner-from-anywhere"),
    pytest.param("own_alice", "own_bob", True, True, id="in-the-room"),
    pytest.param("own_carol", "own_bob", False, False, id="stranger-sees-nothing"),
]


@pytest.mark.invariant(82)
@pytest.mark.parametrize("viewer, target, in_room, expected", SEES)
def test_sees_proposal(viewer: str, target: str, in_room: bool, expected: bool) -> None:
    assert policy.sees_proposal(viewer, target, viewer_in_room=in_room) is expected


BY_TASK = [
    pytest.param(True, 1, True, None, id="accept-unchanged"),
    pytest.param(True, 2, True, ErrorCode.CONFLICT, id="accept-changed-needs-proposal-id"),
    pytest.param(True, 2, False, None, id="reject-changed"),
    pytest.param(False, 0, True, ErrorCode.CONFLICT, id="no-boundary-no-consent"),
    pytest.param(False, 0, False, ErrorCode.CONFLICT, id="no-boundary-no-rejection"),
]


@pytest.mark.invariant(45)
@pytest.mark.parametrize("crosses, asks, accept, expected", BY_TASK)
def test_decide_by_task_id(crosses: bool, asks: int, accept: bool, expected: ErrorCode | None) -> None:
    call = lambda: policy.decide_by_task_id(crosses=crosses, proposals_for_task=asks, accept=accept)  # noqa: E731
    assert outcome(call) == expected


MENTION = [
    pytest.param("agt_alice", "agt_alice", True, MentionEffect.NOTIFY, id="self-even-with-causers"),
    pytest.param("agt_alice", "agt_alice2", False, MentionEffect.WAKE, id="own-owner"),
    pytest.param("agt_alice", "agt_bob", True, MentionEffect.PROPOSE, id="other-owner"),
    # A run woken by bob's words mentioning its own owner's agent asks on bob's behalf (invariant 102).
    pytest.param("agt_alice", "agt_alice2", True, MentionEffect.PROPOSE, id="own-owner-with-foreign-causer"),
]


@pytest.mark.invariant(102)
@pytest.mark.parametrize("actor, member, others_cross, expected", MENTION)
def test_mention_effect(actor: str, member: str, others_cross: bool, expected: MentionEffect) -> None:
    assert policy.mention_effect(actor, member, others_cross=others_cross) is expected


CROSS = [
    pytest.param({"own_alice"}, "own_alice", (), id="own-words-only"),
    pytest.param({"own_alice"}, "own_bob", ("own_alice",), id="another-owner"),
    pytest.param(
        {"own_carol", "own_alice", "own_bob"}, "own_bob", ("own_alice", "own_carol"), id="sorted-minus-target"
    ),
    pytest.param(set(), "own_bob", (), id="nobody"),
]


@pytest.mark.invariant(78)
@pytest.mark.parametrize("causers, target, expected", CROSS)
def test_whose_words_cross(causers: set[str], target: str, expected: tuple[str, ...]) -> None:
    assert policy.whose_words_cross(frozenset(causers), target) == expected


# --- a credential inside the write --------------------------------------------------------------------------------

HOLDS = CredentialNow(expired=False, run_state=None, scopes=frozenset({Scope.POST}))
CREDENTIAL = [
    pytest.param(HOLDS, None, id="holds"),
    pytest.param(None, ErrorCode.UNAUTHENTICATED, id="revoked-or-agent-stopped"),
    pytest.param(replace(HOLDS, expired=True), ErrorCode.UNAUTHENTICATED, id="expired"),
    pytest.param(replace(HOLDS, run_state="running"), None, id="run-running"),
    pytest.param(replace(HOLDS, run_state="stopping"), None, id="run-stopping"),
    pytest.param(replace(HOLDS, run_state="completed"), ErrorCode.UNAUTHENTICATED, id="run-ended"),
    pytest.param(replace(HOLDS, run_state="queued"), ErrorCode.UNAUTHENTICATED, id="run-not-started"),
    pytest.param(replace(HOLDS, scopes=frozenset()), ErrorCode.FORBIDDEN_SCOPE, id="scope-lost"),
    pytest.param(replace(HOLDS, expired=True, scopes=frozenset()), ErrorCode.UNAUTHENTICATED, id="credential-first"),
]


@pytest.mark.invariant(34)
@pytest.mark.parametrize("now, expected", CREDENTIAL)
def test_credential_holds(now: CredentialNow | None, expected: ErrorCode | None) -> None:
    assert outcome(lambda: policy.credential_holds(now, Scope.POST)) == expected


# --- the operator's and owners' rules: consent modes, rooms, grants, tasks handed on -------------------------------

TC = ConsentMode.TRUST_COLLABORATOR
MODE_CHOICE = [
    pytest.param(ConsentMode.APPROVE_ALL, None, None, False, None, id="no-collaborator-needed"),
    pytest.param(ConsentMode.TASK_BY_TASK, "alice", "own_alice", True, ErrorCode.INVALID_ARGUMENT, id="only-tc-names"),
    pytest.param(TC, None, None, False, ErrorCode.INVALID_ARGUMENT, id="tc-needs-one"),
    pytest.param(TC, "zed", None, False, ErrorCode.INVALID_ARGUMENT, id="unknown-owner"),
    pytest.param(TC, "carol", "own_carol", False, ErrorCode.INVALID_ARGUMENT, id="owner-elsewhere-same-answer"),
    pytest.param(TC, "bob", "own_bob", True, ErrorCode.INVALID_ARGUMENT, id="not-yourself"),
    pytest.param(TC, "alice", "own_alice", True, None, id="collaborator-in-room"),
]


@pytest.mark.parametrize("chosen, named, found, in_room, expected", MODE_CHOICE)
def test_check_mode_choice(
    chosen: ConsentMode, named: str | None, found: str | None, in_room: bool, expected: ErrorCode | None
) -> None:
    def call() -> None:
        policy.check_mode_choice(
            chosen, "own_bob", collaborator=named, collaborator_id=found, collaborator_in_room=in_room
        )

    assert outcome(call) == expected


UNCHANGED = [
    pytest.param(None, ConsentMode.TASK_BY_TASK, None, True, id="default-is-task_by_task"),
    pytest.param(None, ConsentMode.TRUST_ROOM, None, False, id="first-mode"),
    # Setting trust_room again must not move its moment forward: it is unchanged, so nothing is written.
    pytest.param((ConsentMode.TRUST_ROOM, None), ConsentMode.TRUST_ROOM, None, True, id="same-trust_room"),
    pytest.param((TC, "own_alice"), TC, "own_carol", False, id="other-collaborator"),
    pytest.param((TC, "own_alice"), TC, "own_alice", True, id="same-collaborator"),
]


@pytest.mark.parametrize("previous, chosen, collaborator, expected", UNCHANGED)
def test_mode_unchanged(
    previous: tuple[ConsentMode, str | None] | None, chosen: ConsentMode, collaborator: str | None, expected: bool
) -> None:
    assert policy.mode_unchanged(previous, chosen, collaborator) is expected


GRANT = GrantRequest(
    giver_id="own_bob", taker_id="own_alice", giver="bob", taker="alice", unverified=(), already_granted=False
)
GRANTS = [
    pytest.param(GRANT, None, id="grant"),
    pytest.param(replace(GRANT, taker_id="own_bob"), ErrorCode.INVALID_ARGUMENT, id="not-to-oneself"),
    pytest.param(replace(GRANT, unverified=("alice",)), ErrorCode.IDENTITY_UNVERIFIED, id="unverified"),
    pytest.param(replace(GRANT, already_granted=True), ErrorCode.CONFLICT, id="once"),
    pytest.param(
        replace(GRANT, unverified=("bob",), already_granted=True), ErrorCode.IDENTITY_UNVERIFIED, id="verify-first"
    ),
]


@pytest.mark.invariant(24)
@pytest.mark.parametrize("facts, expected", GRANTS)
def test_may_grant(facts: GrantRequest, expected: ErrorCode | None) -> None:
    assert outcome(lambda: policy.may_grant(facts)) == expected


@pytest.mark.parametrize(
    "in_room, expected", [pytest.param(True, None, id="in-room"), pytest.param(False, ErrorCode.INVALID_ARGUMENT)]
)
def test_require_owner_in_room(in_room: bool, expected: ErrorCode | None) -> None:
    assert outcome(lambda: policy.require_owner_in_room(in_room, "owner", "bob", "shared")) == expected


@pytest.mark.parametrize(
    "agent_owner, expected",
    [pytest.param("own_bob", None, id="own-agent"), pytest.param("own_alice", ErrorCode.INVALID_ARGUMENT, id="other")],
)
def test_require_own_agent(agent_owner: str, expected: ErrorCode | None) -> None:
    assert outcome(lambda: policy.require_own_agent(agent_owner, "own_bob", "alice-claude")) == expected


REASSIGN = [
    pytest.param("agt_bob", "agt_bob", ConsentState.ACCEPTED, ErrorCode.CONFLICT, id="already-agreed"),
    pytest.param("agt_bob", "agt_bob", ConsentState.AUTO, ErrorCode.CONFLICT, id="already-own-owners"),
    pytest.param("agt_bob", "agt_bob", ConsentState.REJECTED, None, id="ask-again-after-rejection"),
    pytest.param("agt_bob", "agt_bob", ConsentState.PENDING, None, id="renew-pending"),
    pytest.param("agt_carol", "agt_bob", ConsentState.ACCEPTED, None, id="someone-else"),
    pytest.param("agt_bob", None, ConsentState.AUTO, None, id="unassigned"),
]


@pytest.mark.parametrize("target, assignee, state, expected", REASSIGN)
def test_may_reassign(target: str, assignee: str | None, state: ConsentState, expected: ErrorCode | None) -> None:
    assert outcome(lambda: policy.may_reassign(target, assignee, state, "bob-claude")) == expected


TASK_WAKES = [
    pytest.param(ConsentState.AUTO, "agt_bob", True, id="own-owner-work"),
    pytest.param(ConsentState.ACCEPTED, "agt_bob", True, id="accepted-at-once"),
    pytest.param(ConsentState.PENDING, "agt_bob", False, id="waits-for-consent"),
    pytest.param(ConsentState.REJECTED, "agt_bob", False, id="rejected"),
    pytest.param(ConsentState.AUTO, "agt_alice", False, id="never-wakes-itself"),
]


@pytest.mark.parametrize("state, assignee, expected", TASK_WAKES)
def test_task_wakes(state: ConsentState, assignee: str, expected: bool) -> None:
    assert policy.task_wakes(state, assignee, "agt_alice") is expected


# --- Runs and wakes ---------------------------------------------------------------------------------------

WAKE = policy.WakeFacts(
    agent_active=True,
    holds_invoke=True,
    member=True,
    room_quarantined=False,
    crossers=(replace(ALICE_WORDS, standing=Standing(ConsentMode.APPROVE_ALL)),),
    runs_proposal=True,
    proposal_accepted=True,
    auto_accepted=True,
    task=policy.WakeTask(status=TaskStatus.OPEN, still_assigned=True, payload_bound=True, words_unchanged=True),
)


def wake(**facts: object) -> policy.WakeFacts:
    return replace(WAKE, **facts)


def task(**facts: object) -> policy.WakeFacts:
    assert WAKE.task is not None
    return replace(WAKE, task=replace(WAKE.task, **facts))


WITHDRAW = [
    pytest.param(WAKE, False, None, id="everything-holds"),
    pytest.param(wake(task=None, runs_proposal=False, crossers=()), False, None, id="own-mention"),
    pytest.param(wake(agent_active=False), False, "agent_deleted", id="agent-deleted"),
    pytest.param(wake(holds_invoke=False), True, "invoke_revoked", id="invoke-revoked"),
    pytest.param(wake(holds_invoke=False, agent_active=False), False, "agent_deleted", id="agent-first"),
    pytest.param(wake(member=False), True, "membership_ended", id="left-room"),
    pytest.param(wake(room_quarantined=True), True, "room_quarantined", id="quarantined"),
    pytest.param(wake(crossers=(replace(ALICE_WORDS, grant_id=None),)), True, "grant_revoked", id="grant-revoked"),
    pytest.param(wake(crossers=(replace(ALICE_WORDS, verified=False),)), True, "identity_unverified", id="unverified"),
    pytest.param(
        wake(crossers=(replace(ALICE_WORDS, grant_id=None, verified=False),)), True, "grant_revoked", id="grant-first"
    ),
    pytest.param(wake(proposal_accepted=False), True, "consent_withdrawn", id="proposal-gone"),
    # The mode that auto-accepted it was tightened: judged before the start only.
    pytest.param(wake(crossers=(ALICE_WORDS,)), False, "consent_mode_changed", id="mode-tightened-before-start"),
    pytest.param(wake(crossers=(ALICE_WORDS,)), True, None, id="mode-tightened-while-running"),
    pytest.param(wake(crossers=(ALICE_WORDS,), auto_accepted=False), False, None, id="accepted-by-a-person"),
    pytest.param(task(status=None), True, "task_cancelled", id="task-gone"),
    pytest.param(task(status=TaskStatus.CANCELLED), True, "task_cancelled", id="task-cancelled"),
    pytest.param(task(status=TaskStatus.DONE), False, "task_done", id="task-done-before-start"),
    pytest.param(task(status=TaskStatus.DONE), True, None, id="task-done-while-running"),
    pytest.param(task(still_assigned=False), False, "reassigned", id="reassigned-before-start"),
    pytest.param(task(still_assigned=False), True, None, id="reassigned-while-running-stopped-elsewhere"),
    pytest.param(task(payload_bound=False), True, "payload_unbound", id="payload-unbound"),
    pytest.param(task(words_unchanged=False), True, "edited", id="edited"),
    pytest.param(task(words_unchanged=False, status=TaskStatus.CANCELLED), True, "task_cancelled", id="cancel-first"),
]


@pytest.mark.parametrize("facts, started, expected", WITHDRAW)
def test_withdrawal_reason(facts: policy.WakeFacts, started: bool, expected: str | None) -> None:
    assert policy.withdrawal_reason(facts, started=started) == expected


@pytest.mark.parametrize(("viewer", "author", "sees"), [("own_a", "own_a", True), ("own_b", "own_a", False)])
def test_sees_mention_receipts(viewer: str, author: str, sees: bool) -> None:
    assert policy.sees_mention_receipts(OwnerId(viewer), OwnerId(author)) is sees


HELD = policy.RunHold(state=RunState.RUNNING, holder="sup_a", lease=2, stop_requested=False)
MINT = [
    pytest.param(HELD, None, id="held-by-this-claim"),
    pytest.param(None, "the run no longer exists", id="gone"),
    pytest.param(replace(HELD, stop_requested=True), "the run is running with a stop asked for", id="stop-asked"),
    pytest.param(
        replace(HELD, state=RunState.STOPPING, stop_requested=True),
        "the run is stopping with a stop asked for",
        id="withdrawn-while-held",
    ),
    pytest.param(replace(HELD, state=RunState.QUEUED, holder=None), "the run is queued", id="recovered"),
    pytest.param(replace(HELD, lease=3), "another claim holds the run now", id="claimed-again-same-holder"),
    pytest.param(replace(HELD, holder="sup_b", lease=3), "another claim holds the run now", id="claimed-elsewhere"),
]


@pytest.mark.parametrize("now, expected", MINT)
def test_run_token_refusal(now: policy.RunHold | None, expected: str | None) -> None:
    assert policy.run_token_refusal(now, "sup_a", 2) == expected


@pytest.mark.parametrize(
    "tool, spawnable, constrainable",
    [
        (AgentTool.CLAUDE, True, True),
        (AgentTool.CODEX, True, True),
        (AgentTool.OPENCLAW, True, False),  # no read-only mode to hold another owner's words
        (AgentTool.CHAT, False, True),  # never spawned: nothing to constrain
        (AgentTool.OTHER, False, True),
    ],
)
def test_which_tools_are_spawned_and_constrained(tool: AgentTool, spawnable: bool, constrainable: bool) -> None:
    assert (policy.spawnable(tool), policy.constrainable(tool)) == (spawnable, constrainable)


@pytest.mark.parametrize(
    "agent_owner, expected", [("own_alice", True), ("own_bob", False)], ids=["own-agent", "another-owners-agent"]
)
def test_only_your_owners_agents_may_be_stopped(agent_owner: str, expected: bool) -> None:
    assert policy.owns_agent(ALICE, agent_owner) is expected
