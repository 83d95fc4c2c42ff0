"""The listener's wake book, hub side, driven the way the owner API drives it (`listener_api.handle` with an
authenticated device), in process: what a hostile device could try against it."""

from __future__ import annotations

import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent_rooms_mcp import policy
from agent_rooms_mcp.book import this_host
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.services.runbook import LocalWakeBook
from agent_rooms_mcp.wake.process import start_time
from agent_rooms_mcp.web import listener_api
from tests.conftest import OPERATOR, World
from tests.wakeworld import post

HELLO = {"agents": ["alice-bot"], "take_over": False, "max_running": 2, "max_running_per_agent": 1}


@pytest.fixture
async def remote(woken: World) -> World:
    async with woken.hub() as hub:
        await hub.accounts.set_owner_local(OPERATOR, "alice", False)
    return woken


async def device(hub: Hub, name: str = "laptop") -> Human:
    made = await hub.devices.enroll(OPERATOR, "alice", "http://127.0.0.1:1")
    login = await hub.devices.redeem(made.code, name)
    return await hub.devices.authenticate(login.credential)


async def call(hub: Hub, who: Human, op: str, **body: Any) -> dict[str, Any]:
    return await listener_api.handle(hub, who, op, body)


async def claimed(hub: Hub, who: Human, holder: str, host: str = "laptop") -> dict[str, Any]:
    """Say hello as `holder`, claim the waiting wake and report its spawn: the run's id and lease."""
    await call(hub, who, "hello", holder=holder, host=host, **HELLO)
    token = (await call(hub, who, "claim", holder=holder))["claim"]
    assert token is not None
    book = await hub.listeners.book(who, holder)
    [(run_id, lease)] = (await book.renew()).items()
    await call(hub, who, "spawning", holder=holder, run_id=run_id, lease=lease)
    return {"run_id": run_id, "lease": lease}


def lapse(world: World) -> None:
    """Every lease runs out now."""
    with sqlite3.connect(world.db) as conn:
        conn.execute("UPDATE runs SET lease_until = '2000-01-01T00:00:00.000000Z' WHERE lease_until IS NOT NULL")


@pytest.mark.invariant(92)
async def test_a_device_revoked_after_its_request_authenticated_says_no_hello_and_claims_nothing(remote: World) -> None:
    await post(remote, "alice-claude", "@alice-bot please")
    async with remote.hub() as hub:
        who = await device(hub)
        await call(hub, who, "hello", holder="lst_0123456789abcdef", host="laptop", **HELLO)
        await hub.devices.revoke(Human(OPERATOR), who.device_id)  # lands after the requests authenticated
        before = remote.fingerprint()
        for op, body in (("claim", {}), ("hello", {"host": "laptop", **HELLO})):
            with pytest.raises(RoomsError) as refused:
                await call(hub, who, op, holder="lst_0123456789abcdef", **body)
            assert refused.value.code is ErrorCode.UNAUTHENTICATED, op
        assert remote.fingerprint() == before
    assert not remote.sql("SELECT 1 FROM listener_holds")
    assert not remote.sql("SELECT 1 FROM tokens WHERE run_id IS NOT NULL")
    assert remote.sql("SELECT state FROM runs")[0][0] == "waiting_for_listener"


@pytest.mark.invariant(99)
async def test_a_listener_never_passes_its_runs_off_as_processes_of_the_hubs_machine(remote: World) -> None:
    """A device saying its host is the hub's own: the hub names it with the device, so the hub's recovery
    never kills the pid it reported (found by a hostile review: it SIGKILLed any pid it was told)."""
    await post(remote, "alice-claude", "@alice-bot please")
    victim = subprocess.Popen(["sleep", "60"])
    try:
        async with remote.hub() as hub:
            who = await device(hub)
            run = await claimed(hub, who, "lst_0123456789abcdef", host=this_host())
            await call(hub, who, "started", holder="lst_0123456789abcdef", pid=victim.pid,
                       pid_start=start_time(victim.pid), **run)  # fmt: skip
            assert remote.sql("SELECT lease_host FROM runs")[0][0] == f"{who.device_id}@{this_host()}"
            lapse(remote)
            left = await LocalWakeBook(hub.store, hub.settings.wake, hub.accounts, holder="sup_x",
                                       host=this_host()).recover()  # fmt: skip
        assert left == [] and victim.poll() is None
        assert remote.sql("SELECT state FROM runs")[0][0] == "lost"
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.invariant(92, 93)
async def test_a_revoked_devices_runs_settle(remote: World) -> None:
    """Revoked mid-run: the spawned run waits `stop_pending` until its lease passes, then ends `lost`; one
    never spawned goes back to wait for a listener. Nothing stays unsettled for ever."""
    await post(remote, "alice-claude", "@alice-bot please")
    async with remote.hub() as hub:
        who = await device(hub)
        await claimed(hub, who, "lst_0123456789abcdef")
        await hub.devices.revoke(Human(OPERATOR), who.device_id)
        assert remote.sql("SELECT state FROM runs")[0][0] == "stop_pending"
        assert not remote.sql("SELECT 1 FROM tokens WHERE run_id IS NOT NULL AND revoked_at IS NULL")
        lapse(remote)
        await LocalWakeBook(hub.store, hub.settings.wake, hub.accounts, holder="sup_x", host="hub").recover()
        assert [tuple(r) for r in remote.sql("SELECT state, outcome FROM runs")] == [("lost", "lost")]

        await post(remote, "alice-claude", "@alice-bot again")
        other = await device(hub, "desktop")
        await call(hub, other, "hello", holder="lst_fedcba9876543210", host="desktop", **HELLO)
        assert (await call(hub, other, "claim", holder="lst_fedcba9876543210"))["claim"] is not None
        await hub.devices.revoke(Human(OPERATOR), other.device_id)
        await LocalWakeBook(hub.store, hub.settings.wake, hub.accounts, holder="sup_x", host="hub").recover()
        assert remote.sql("SELECT state FROM runs ORDER BY created_at")[-1][0] == "waiting_for_listener"


@pytest.mark.invariant(93)
async def test_a_listeners_recovery_touches_only_its_own_devices_runs(remote: World) -> None:
    await post(remote, "alice-claude", "@alice-bot please")
    async with remote.hub() as hub:
        laptop, desktop = await device(hub), await device(hub, "desktop")
        await claimed(hub, laptop, "lst_0123456789abcdef")
        await call(hub, desktop, "hello", holder="lst_fedcba9876543210", host="desktop", **HELLO)
        lapse(remote)
        assert (await call(hub, desktop, "recover", holder="lst_fedcba9876543210"))["left_behind"] == []
        assert remote.sql("SELECT state FROM runs")[0][0] == "running"  # not the desktop's to end
        await call(hub, laptop, "recover", holder="lst_0123456789abcdef")
        assert remote.sql("SELECT state FROM runs")[0][0] == "lost"


async def test_hostile_reports_are_refused_by_name_and_change_nothing(remote: World) -> None:
    await post(remote, "alice-claude", "@alice-bot please")
    async with remote.hub() as hub:
        who = await device(hub)
        run = await claimed(hub, who, "lst_0123456789abcdef")
        holder = {"holder": "lst_0123456789abcdef"}
        end = {**holder, **run, "state": "completed", "outcome": "ok", "stop_signal": "none"}
        before = remote.fingerprint()
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("spawning", {**holder, "run_id": run["run_id"], "lease": 2**64}, "lease"),
            ("started", {**holder, **run, "pid": 7, "pid_start": 2**64}, "pid_start"),
            ("finish", {**end, "reset_at": "garbage"}, "reset_at"),
            ("finish", {**end, "reset_at": "2030-01-01T00:00:00"}, "reset_at"),
            ("finish", {**end, "state": "running"}, "state"),
            ("finish", {**end, "outcome": "pwned"}, "outcome"),
            ("finish", {**end, "tool_counts": {"art_" + "A" * 43: 1}}, "tool_counts"),
            ("session", {**holder, **run, "session_id": "art_" + "A" * 43}, "session_id"),
            # A session id is resumed as a CLI argument (`--resume ID`, `resume ID`): never one read as an option.
            ("session", {**holder, **run, "session_id": "--dangerously-skip-permissions"}, "session_id"),
            ("session", {**holder, **run, "session_id": "-c"}, "session_id"),
            ("wait", {**holder, "timeout_ms": 10**9}, "timeout_ms"),
            ("hello", {**holder, **HELLO, "host": "x", "max_running": 10**6}, "max_running"),
        ]
        for op, body, field in cases:
            with pytest.raises(RoomsError) as refused:
                await listener_api.handle(hub, who, op, body)
            assert refused.value.code is ErrorCode.INVALID_ARGUMENT and field in refused.value.message, (op, body)
        with pytest.raises(RoomsError) as unknown:
            await call(hub, who, "pwn", holder="lst_0123456789abcdef")
        assert unknown.value.code is ErrorCode.NOT_FOUND
        with pytest.raises(RoomsError) as stranger:  # a holder of no listener of this device
            await call(hub, who, "stops", holder="lst_aaaaaaaaaaaaaaaa")
        assert stranger.value.code is ErrorCode.CONFLICT
        assert remote.fingerprint() == before


def test_a_listener_refuses_by_its_own_policy_whatever_the_hub_sends() -> None:
    base = {"named": True, "wake": True, "cross_owner": False, "accepts_cross_owner": False, "sandboxed": False,
            "workdir_inside_root": True}  # fmt: skip
    cases = [
        ({}, None),
        ({"named": False}, "not_in_local_policy"),
        ({"wake": False}, "not_wakeable_here"),
        ({"cross_owner": True}, "cross_owner_refused_here"),
        ({"cross_owner": True, "accepts_cross_owner": True}, "sandbox_required"),  # DESIGN §5: only in a sandbox
        ({"cross_owner": True, "accepts_cross_owner": True, "sandboxed": True}, None),
        ({"workdir_inside_root": False}, "workdir_outside_root"),
    ]
    for change, expected in cases:
        assert policy.listener_refusal(**{**base, **change}) == expected, change  # type: ignore[arg-type]


async def test_a_listeners_reported_reset_time_moves_the_back_off_only_within_its_bounds(remote: World) -> None:
    """A listener reports a provider's rate limit with a reset time: "now" still holds the owner's other
    machines back for the least back-off, and "next year" for no more than the longest, not for a year."""
    caps = remote.settings.wake
    holder = {"holder": "lst_0123456789abcdef"}
    await post(remote, "alice-claude", "@alice-bot please")
    async with remote.hub() as hub:
        who = await device(hub)
        for reset_in, least, most in (
            (timedelta(0), caps.backoff_min_s, caps.backoff_min_s + 30),
            (timedelta(days=365), caps.backoff_max_s, caps.backoff_max_s + 30),
        ):
            run = await claimed(hub, who, holder["holder"])
            before = datetime.now(UTC)
            await call(hub, who, "finish", **holder, **run, state="failed", outcome="rate_limit", stop_signal="none",
                       reset_at=(before + reset_in).isoformat())  # fmt: skip
            after = datetime.now(UTC)
            [backoff] = remote.sql("SELECT not_before FROM backoffs")
            not_before = datetime.fromisoformat(backoff[0])
            assert before + timedelta(seconds=least) <= not_before <= after + timedelta(seconds=most), reset_in
            # The follow-up waits as long; let it be claimed now, for the next report.
            with sqlite3.connect(remote.db) as conn:
                conn.execute("UPDATE backoffs SET not_before = '2000-01-01T00:00:00.000000Z'")
                conn.execute("UPDATE runs SET not_before = NULL WHERE state = 'waiting_for_listener'")


async def test_bye_lets_go_only_of_the_callers_own_idle_holds_and_keeps_the_fencing_epoch(remote: World) -> None:
    """`bye` (a listener stopping): another device's or another owner's device naming the holder is refused; an
    agent with a run in flight stays held; a released agent goes to the next listener under a new epoch, as
    after a lapse, and the listener that said bye neither claims its wakes nor renews the hold back."""
    await post(remote, "alice-claude", "@alice-bot please")
    laptop_holder, desktop_holder = "lst_0123456789abcdef", "lst_fedcba9876543210"
    async with remote.hub() as hub:
        laptop, desktop = await device(hub), await device(hub, "desktop")
        made = await hub.devices.enroll(OPERATOR, "bob", "http://127.0.0.1:1")
        bobs = await hub.devices.authenticate((await hub.devices.redeem(made.code, "bobs")).credential)
        run = await claimed(hub, laptop, laptop_holder)
        before = remote.fingerprint()
        for stranger in (desktop, bobs):
            with pytest.raises(RoomsError) as refused:
                await call(hub, stranger, "bye", holder=laptop_holder)
            assert refused.value.code is ErrorCode.CONFLICT
        assert remote.fingerprint() == before
        # Its run is in flight: the agent stays held, and the desktop still waits for it.
        assert (await call(hub, laptop, "bye", holder=laptop_holder))["released"] == []
        hello = await call(hub, desktop, "hello", holder=desktop_holder, host="desktop", **HELLO)
        assert hello["held"] == [] and [e["agent"] for e in hello["elsewhere"]] == ["alice-bot"]
        await call(hub, laptop, "finish", holder=laptop_holder, state="completed", outcome="ok",
                   stop_signal="none", **run)  # fmt: skip
        assert (await call(hub, laptop, "bye", holder=laptop_holder))["released"] == ["alice-bot"]
        await call(hub, laptop, "renew", holder=laptop_holder)  # after bye, before anyone took it: its own again
        assert (await call(hub, laptop, "bye", holder=laptop_holder))["released"] == ["alice-bot"]
        await post(remote, "alice-claude", "@alice-bot again")
        assert (await call(hub, laptop, "claim", holder=laptop_holder))["claim"] is None
        hello = await call(hub, desktop, "hello", holder=desktop_holder, host="desktop", **HELLO)
        assert hello["held"] == ["alice-bot"]
        await call(hub, laptop, "renew", holder=laptop_holder)  # too late: the hold is the desktop's now
        assert (await call(hub, laptop, "claim", holder=laptop_holder))["claim"] is None
        assert (await call(hub, desktop, "claim", holder=desktop_holder))["claim"] is not None
    assert [tuple(r) for r in remote.sql("SELECT holder, epoch FROM listener_holds")] == [(desktop_holder, 2)]
    assert remote.sql("SELECT count(*) FROM audit WHERE action = 'listener.release'")[0][0] == 2
    assert remote.sql("SELECT count(*) FROM audit WHERE action = 'listener.take_over'")[0][0] == 1
