"""The consent rules as tables (STYLE P13): one row per rule, rows where rule order decides the code,
and default-deny rows. Pure functions, no database."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent_rooms_mcp import policy
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.policy import ConsentMode, ConsentState, CrossOwner, Decision, Standing, TaskAction, TaskStatus
from agent_rooms_mcp.principals import AgentTool, Caller, Scope

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
    proposal_state="pending",
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
        replace(DECISION, decider_owner_id="own_carol", proposal_state="accepted"),
        True,
        ErrorCode.FORBIDDEN_SCOPE,
        id="owner-before-state",
    ),
    pytest.param(replace(DECISION, proposal_state="accepted"), True, ErrorCode.CONFLICT, id="final-accepted"),
    pytest.param(replace(DECISION, proposal_state="rejected"), False, ErrorCode.CONFLICT, id="final-rejected"),
    pytest.param(replace(DECISION, proposal_state="superseded"), True, ErrorCode.CONFLICT, id="superseded"),
    pytest.param(replace(DECISION, proposal_state="withdrawn"), False, ErrorCode.CONFLICT, id="withdrawn"),
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
