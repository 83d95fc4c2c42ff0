"""Run outcomes are DESIGN §7's closed list (issue 12's gap): every outcome the code can write is one of
them, the store refuses any other, and the README's table lists exactly them."""

from __future__ import annotations

import itertools
import re
import sqlite3
from pathlib import Path

import pytest

from agent_rooms_mcp import policy
from agent_rooms_mcp.run_states import Outcome, RunState, is_listed_outcome, withdrawn
from agent_rooms_mcp.store import schema
from agent_rooms_mcp.wake.adapters import ADAPTERS, Reading, judge
from agent_rooms_mcp.wake.supervisor import LIMIT_OUTCOMES
from tests.conftest import World
from tests.test_policy import WITHDRAW

ROOT = Path(__file__).resolve().parent.parent
# DESIGN §7, as written there (`withdrawn:<reason>` stands for every reason).
DESIGN_OUTCOMES = (
    "ok", "cli_not_found", "workdir_missing", "sandbox_unavailable", "sandbox_required", "root_refused",
    "env_unavailable", "mcp_failed", "auth", "rate_limit", "usage_limit", "output_cap", "time_limit", "stopped",
    "shutdown", "lost", "expired", "withdrawn",
)  # fmt: skip


def test_the_outcome_enum_is_designs_closed_list() -> None:
    assert tuple(o.value for o in Outcome) == DESIGN_OUTCOMES


def test_the_migration_that_guards_the_store_names_the_same_list() -> None:
    shipped = re.findall(r"'([a-z_]+)'", schema._LISTED_OUTCOMES)
    assert shipped == [o.value for o in Outcome if o != Outcome.WITHDRAWN]


def _readings() -> list[Reading]:
    """Every kind of event a CLI can send that the judge reads, alone and mixed, through the real adapters:
    results ok and not, with each terminal reason the CLIs document, rate limits, auth, MCP failures."""
    events = [
        {"type": "result", "subtype": "success", "is_error": False},
        {"type": "result", "subtype": "success", "is_error": True, "terminal_reason": "api_error"},
        {"type": "result", "subtype": "success", "is_error": True, "api_error_status": 429},
        {"type": "result", "subtype": "error_max_turns", "is_error": True},
        {"type": "result", "subtype": "error_max_budget_usd", "is_error": True},
        {"type": "result", "subtype": "error_during_execution", "is_error": True, "terminal_reason": "aborted_tools"},
        {"type": "result", "subtype": "error_during_execution", "errors": ["No conversation found with session"]},
        {"type": "system", "subtype": "init", "session_id": "s", "mcp_servers": []},
        {"type": "assistant", "error": "authentication_failed"},
        {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": 1}},
        {"type": "turn.completed"},
        {"type": "turn.failed", "error": {"message": "You've hit your usage limit"}},
        {"type": "turn.failed", "error": {"message": "unauthorized"}},
        {"type": "turn.failed", "error": {"message": "something else broke"}},
        {"ok": True, "status": "ok", "sessionId": "s"},
        {"ok": False, "status": "error", "error": {"kind": "rate_limit"}},
        {"ok": False, "status": "timeout"},
    ]
    readings = [Reading()]
    for adapter, event in itertools.product(ADAPTERS.values(), events):
        reading = Reading()
        adapter.read(event, reading)
        readings.append(reading)
    return readings


@pytest.mark.parametrize("stop_requested", [False, True])
@pytest.mark.parametrize("returncode", [0, 1, 2, 126, 127, 137, -9, None])
def test_every_outcome_the_judge_can_give_is_listed(stop_requested: bool, returncode: int | None) -> None:
    for reading in _readings():
        verdict = judge(reading, stop_requested=stop_requested, returncode=returncode)
        assert isinstance(verdict.outcome, Outcome) and is_listed_outcome(verdict.outcome), (reading, verdict)
        assert verdict.state in (RunState.COMPLETED, RunState.FAILED, RunState.STOPPED)


def test_a_cli_that_could_not_be_executed_is_not_found_and_one_that_said_nothing_is_lost() -> None:
    assert judge(Reading(), stop_requested=False, returncode=127).outcome == Outcome.CLI_NOT_FOUND
    assert judge(Reading(), stop_requested=False, returncode=1).outcome == Outcome.LOST


def test_the_limits_the_process_layer_enforces_have_listed_outcomes() -> None:
    assert set(LIMIT_OUTCOMES) == {"wall", "idle", "line_too_long", "output_cap"}
    assert all(is_listed_outcome(o) for o in LIMIT_OUTCOMES.values())


@pytest.mark.parametrize("facts, started, expected", WITHDRAW)
def test_every_withdrawal_reason_makes_a_listed_outcome(
    facts: policy.WakeFacts, started: bool, expected: str | None
) -> None:
    reason = policy.withdrawal_reason(facts, started=started)
    assert reason is None or is_listed_outcome(withdrawn(reason))
    del expected


def test_no_sql_in_the_package_writes_an_outcome_literal() -> None:
    """Every outcome is written as a bound `Outcome` value; a literal in SQL text would escape the enum."""
    found = [
        f"{path.relative_to(ROOT)}: {m.group(0)}"
        for path in (ROOT / "agent_rooms_mcp").rglob("*.py")
        if path.name != "schema.py"  # the migration that maps old words and guards the list
        for m in re.finditer(r"outcome\s*=\s*'[^']*'", path.read_text())
    ]
    assert found == []


@pytest.mark.parametrize(
    "outcome, allowed",
    [
        ("ok", True),
        ("time_limit", True),
        ("withdrawn:edited", True),
        ("withdrawn:payload_missing", True),
        ("withdrawn", False),
        ("withdrawn:", False),
        ("withdrawn:Edited", False),
        ("withdrawn:edited; drop", False),
        ("error", False),
        ("error:OSError", False),
        ("no_result:exit_1", False),
        ("wall", False),
        ("CONSTRAINED_RUNTIME_REQUIRED", False),
    ],
)
async def test_the_store_refuses_an_outcome_outside_the_list(world: World, outcome: str, allowed: bool) -> None:
    assert is_listed_outcome(outcome) is allowed
    rows = world.sql("SELECT a.agent_id, a.owner_id, r.room_id FROM agents a, rooms r LIMIT 1")
    agent_id, owner_id, room_id = rows[0]
    conn = sqlite3.connect(world.db)
    try:
        with conn:
            conn.execute(
                "INSERT INTO runs (run_id, agent_id, owner_id, room_id, trigger, cause_id, caused_by, constrained,"
                " depth, state, created_at) VALUES ('run_t', ?, ?, ?, 'mention', 'msg_t', ?, 0, 1, 'queued', 'now')",
                (agent_id, owner_id, room_id, agent_id),
            )
        write = "UPDATE runs SET state = 'failed', outcome = ? WHERE run_id = 'run_t'"
        if allowed:
            with conn:
                conn.execute(write, (outcome,))
        else:
            with pytest.raises(sqlite3.IntegrityError, match="closed list"), conn:
                conn.execute(write, (outcome,))
            [(stored,)] = conn.execute("SELECT outcome FROM runs WHERE run_id = 'run_t'").fetchall()
            assert stored is None  # the refused write changed nothing
    finally:
        conn.close()


def test_the_readme_lists_every_outcome_once() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Run outcomes") :]
    table = table[: table.index("\n\n", table.index("|"))]
    listed = re.findall(r"^\| `([a-z_:<>]+)` \|", table, re.M)
    assert [w.replace(":<reason>", "") for w in listed] == [o.value for o in Outcome]
