"""Fencing (DESIGN §9.1, invariant 93): a supervisor whose lease ran out while another took its run over (a
laptop asleep between claim and spawn, a lock held past the lease) records nothing over the run's new holder
and stops its own CLI; the run ends once, by whoever holds it now."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from agent_rooms_mcp.book import Ending, LeaseLost, this_host
from agent_rooms_mcp.embedded import embedded_supervisor
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.services.runbook import LocalWakeBook
from tests.conftest import OPERATOR, World
from tests.test_wake_guards import PAST, execute
from tests.wakeworld import Fakes, post, runs, until

DONE = Ending("completed", "ok", "none")


def book(hub: Hub, holder: str, host: str = "") -> LocalWakeBook:
    return LocalWakeBook(hub.store, hub.settings.wake, hub.accounts, holder=holder, host=host or this_host())


def state(world: World, run_id: str) -> tuple[dict[str, object], list[sqlite3.Row], list[sqlite3.Row]]:
    """All a report could change: the run's row, its tokens and the audit."""
    [row] = world.sql("SELECT * FROM runs WHERE run_id = ?", (run_id,))
    tokens = world.sql("SELECT token_id, revoked_at FROM tokens WHERE run_id = ? ORDER BY token_id", (run_id,))
    return dict(row), [tuple(t) for t in tokens], [tuple(a) for a in world.audit_rows()]  # type: ignore[misc]


def results(events: Path) -> list[dict[str, object]]:
    lines = events.read_text().splitlines() if events.exists() else []
    return [e for e in map(json.loads, lines) if e.get("type") == "result"]


def ends(world: World, run_id: str) -> list[str]:
    """Every audit row that ended the run."""
    return [
        r["action"]
        for r in world.audit_rows()
        if r["action"] in ("run.end", "run.lost", "run.withdraw") and json.loads(r["detail"])["run_id"] == run_id
    ]


@pytest.mark.invariant(93)
@pytest.mark.parametrize("taken_by", ["another supervisor", "the same supervisor after its sleep"])
async def test_a_claim_whose_lease_ran_out_records_nothing_over_the_runs_new_claim(woken: World, taken_by: str) -> None:
    """Claimed, then asleep past the lease: recovery queues the run again and a new claim takes it. The old
    claim's spawn, session and end are refused (`LeaseLost`) and change nothing: not the run, not the new
    claim's token, not the audit. The holder id alone is not enough when the same supervisor claims the run
    again: the claim's lease number tells the two claims apart."""
    await post(woken, "alice-claude", "@alice-bot please look")
    async with Hub.open(woken.settings) as hub:
        sleeper = book(hub, "sup_sleeper")
        taker = sleeper if taken_by.startswith("the same") else book(hub, "sup_taker")
        old = await sleeper.claim()
        assert old is not None and old.run_token
        execute(woken, "UPDATE runs SET lease_until = ? WHERE run_id = ?", (PAST, old.run_id))  # the sleep
        assert await taker.recover() == []
        new = await taker.claim()
        assert new is not None and new.run_id == old.run_id and new.lease > old.lease

        before = state(woken, old.run_id)
        for report in (
            lambda: sleeper.spawning(old.run_id, old.lease),
            lambda: sleeper.started(old.run_id, old.lease, os.getpid(), None),
            lambda: sleeper.session(old.run_id, old.lease, "sess-of-the-old-claim"),
            lambda: sleeper.finish(old.run_id, old.lease, Ending("stopped", "stopped", "sigint")),
        ):
            with pytest.raises(LeaseLost, match=old.run_id):
                await report()
            assert state(woken, old.run_id) == before
        # The new claim's token is live (the old one died with the recovery) and the run is still held.
        [(_, old_revoked), (_, new_revoked)] = sorted(before[1], key=lambda t: t[1] is None)
        assert old_revoked is not None and new_revoked is None
        assert (await taker.renew()).get(old.run_id) == new.lease
        if taker is not sleeper:
            assert await sleeper.renew() == {}

        await taker.spawning(new.run_id, new.lease)
        await taker.started(new.run_id, new.lease, os.getpid(), None)
        await taker.session(new.run_id, new.lease, "sess-of-the-new-claim")
        await taker.finish(new.run_id, new.lease, DONE)
        with pytest.raises(LeaseLost):  # an end is recorded once, even by the holder that recorded it
            await taker.finish(new.run_id, new.lease, DONE)
    [run] = runs(woken, "alice-bot")
    assert (run["state"], run["outcome"], run["session_id"]) == ("completed", "ok", "sess-of-the-new-claim")
    assert ends(woken, run["run_id"]) == ["run.end"]
    actions = [r["action"] for r in woken.audit_rows() if r["action"].startswith("run.")]
    assert actions.count("run.spawn") == 1 and actions.count("run.claim") == 2 and "run.requeue" in actions


@pytest.mark.invariant(93)
async def test_a_supervisor_that_lost_a_started_run_stops_its_cli_and_records_nothing(
    woken: World, fakes: Fakes
) -> None:
    """A real supervisor runs a fake CLI that never finishes. Its lease runs out and a supervisor on another
    host recovers the run: started, so it ends `lost`, never queued again, and the other host leaves the pid
    alone (it names nothing there). The first supervisor learns at its next renewal that it lost the run,
    stops its CLI by the ladder (SIGINT first: the CLI ends its turn) and records no end over the `lost`."""
    fakes.scenario("hang")
    settings = replace(woken.settings, wake=replace(woken.settings.wake, lease_s=6.0))
    async with Hub.open(settings) as hub, anyio.create_task_group() as tg:
        tg.start_soon(embedded_supervisor(hub).run)
        await post(woken, "alice-claude", "@alice-bot start")
        [run] = await until(lambda: (r := runs(woken, "alice-bot")) and r[0]["pid"] and r, "the CLI is running")
        execute(woken, "UPDATE runs SET lease_until = ? WHERE run_id = ?", (PAST, run["run_id"]))
        assert await book(hub, "sup_elsewhere", "another-machine").recover() == []
        events = settings.run_logs_dir / run["run_id"] / "events.jsonl"
        # The event log is closed (and so complete) only once the CLI has been reaped.
        [result] = await until(lambda: results(events), "the first supervisor stops its CLI")
        tg.cancel_scope.cancel()
    with pytest.raises(ProcessLookupError):
        os.kill(run["pid"], 0)
    assert result["terminal_reason"] == "aborted_streaming"  # the fake's answer to SIGINT: the ladder's first rung
    [after] = runs(woken, "alice-bot")
    assert (after["state"], after["outcome"], after["stop_signal"]) == ("lost", "lost", None)
    assert ends(woken, run["run_id"]) == ["run.lost"]
    assert not woken.sql("SELECT 1 FROM tokens WHERE run_id = ? AND revoked_at IS NULL", (run["run_id"],))


@pytest.mark.invariant(93, 103)
@pytest.mark.parametrize("between", ["a stop", "a quarantine", "another claim"])
async def test_no_run_token_is_minted_after_a_switch_lands_between_the_claim_and_the_mint(
    woken: World, between: str
) -> None:
    """The claim and the run token's mint are two transactions (the book's `_claim` then `_equip`, called
    apart here because nothing public stands between them). A switch that lands in the gap revoked the
    tokens the run had then, none: the mint must refuse, or its token would outlive the switch."""
    await post(woken, "alice-claude", "@alice-bot please look")
    async with Hub.open(woken.settings) as hub:
        sup = book(hub, "sup_a")
        claimed = await sup._claim()
        assert claimed is not None
        if between == "a stop":
            await hub.runs.stop_as_owner(OPERATOR, "alice-bot", claimed.run_id)
        elif between == "a quarantine":
            # The quarantine's receipt waits for the run's end, which only the supervisor between the two
            # steps would bring: let it wait in the background and look at the run as it leaves it.
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.containment.quarantine_room, OPERATOR, "lobby")
                await until(lambda: runs(woken, "alice-bot")[0]["stop_requested_at"], "the quarantine lands")
                tg.cancel_scope.cancel()
        else:
            execute(woken, "UPDATE runs SET lease_until = ? WHERE run_id = ?", (PAST, claimed.run_id))
            assert await book(hub, "sup_b").recover() == []
            assert await book(hub, "sup_b").claim() is not None
        live = woken.sql("SELECT token_id FROM tokens WHERE run_id = ? AND revoked_at IS NULL", (claimed.run_id,))
        equipped = await sup._equip(claimed)
    assert equipped.run_token == ""
    assert woken.sql("SELECT token_id FROM tokens WHERE run_id = ? AND revoked_at IS NULL", (claimed.run_id,)) == live
    assert woken.chain_verifies()
