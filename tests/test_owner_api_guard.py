"""The owner API's edges a device could abuse: a revoke that lands while a request runs, a device that floods,
a stranger's body, and a defect that must still get our JSON answer (DESIGN §2, §9.1, §9.3)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import httpx2
import pytest

from agent_rooms_mcp import owner_actions
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.settings import Settings
from tests.conftest import OPERATOR, World
from tests.test_devices import bearer, enroll, login, served

pytestmark = pytest.mark.anyio


def _limits(world: World, **fields: object) -> Settings:
    return replace(world.settings, limits=replace(world.settings.limits, **fields))


def _tokens(world: World) -> list[sqlite3.Row]:
    return world.sql("SELECT token_id FROM tokens ORDER BY token_id")


@pytest.mark.invariant(92, 83)
async def test_a_device_revoked_after_its_request_authenticated_writes_nothing(world: World) -> None:
    code = await enroll(world)
    async with world.hub() as hub:
        device = await hub.devices.redeem(code, "laptop")
        who = await hub.devices.authenticate(device.credential)
        # Authenticated and active: the same call would mint a token (the guard passes a live device).
        issued = await owner_actions.perform(hub, who, "token.issue", {"agent": "bob-claude", "ttl_s": 60})
        assert issued.model_dump()["agent"] == "bob-claude"

        # The revoke lands between authentication and the action's writes.
        await hub.devices.revoke(OPERATOR_HUMAN, device.device_id)
        before, tokens = world.fingerprint(), _tokens(world)
        writes = {
            "token.issue": {"agent": "bob-claude", "ttl_s": 60},
            "grant.add": {"giver": "bob", "taker": "alice"},
            "device.revoke": {},
        }
        for name, args in writes.items():
            with pytest.raises(RoomsError) as refused:
                await owner_actions.perform(hub, who, name, args)
            assert refused.value.code is ErrorCode.UNAUTHENTICATED, name
        assert world.fingerprint() == before and _tokens(world) == tokens
        reasons = world.sql("SELECT action, reason FROM audit WHERE outcome = 'denied' AND via = 'device' ORDER BY seq")
        assert [tuple(r) for r in reasons] == [("cli." + n, "device_revoked_during_call") for n in writes]


@pytest.mark.invariant(92)
async def test_a_device_gone_idle_while_its_request_runs_writes_nothing(world: World) -> None:
    code = await enroll(world)
    async with world.hub() as hub:
        device = await hub.devices.redeem(code, "laptop")
        who = await hub.devices.authenticate(device.credential)
        with sqlite3.connect(world.db) as conn:  # its last use now lies beyond the idle expiry
            conn.execute("UPDATE devices SET last_used_at = '2000-01-01T00:00:00.000000Z'")
        before = world.fingerprint()
        with pytest.raises(RoomsError) as refused:
            await owner_actions.perform(hub, who, "token.issue", {"agent": "bob-claude", "ttl_s": 60})
        assert refused.value.code is ErrorCode.UNAUTHENTICATED
        assert world.fingerprint() == before


async def test_the_operator_is_not_a_device_and_is_not_guarded(world: World) -> None:
    async with world.hub() as hub:
        issued = await owner_actions.perform(hub, OPERATOR_HUMAN, "token.issue", {"agent": "bob-claude", "ttl_s": 60})
    assert issued.model_dump()["agent"] == "bob-claude"


@pytest.mark.invariant(67)
async def test_a_device_past_its_owner_actions_a_minute_gets_429_and_changes_nothing(world: World) -> None:
    settings = _limits(world, rate_owner_actions_per_min=3, rate_local_calls=1)
    async with served(settings) as api:
        laptop = (await login(api, await enroll(world, settings=settings))).json()["credential"]
        phone = (await login(api, await enroll(world, settings=settings), name="phone")).json()["credential"]

        async def act(credential: str, name: str, **args: object) -> httpx2.Response:
            return await api.post(f"/owner/v1/actions/{name}", json=args, headers=bearer(credential))

        assert [(await act(laptop, "agent.list")).status_code for _ in range(3)] == [200, 200, 200]
        before, tokens = world.fingerprint(), _tokens(world)
        refused = [await act(laptop, "token.issue", agent="bob-claude", ttl_s=60) for _ in range(4)]
        assert world.fingerprint() == before and _tokens(world) == tokens
        for r in refused:
            assert r.status_code == 429
            body = r.json()
            assert body["code"] == "RATE_LIMITED" and "device" in body["message"]
            assert isinstance(body["retry_after_ms"], int) and body["retry_after_ms"] > 0
            assert int(r.headers["retry-after"]) >= 1
        # A flood leaves one row, not one per refusal; the device's other owner rows are untouched by it.
        rows = world.sql("SELECT actor_kind, via, target FROM audit WHERE action = 'rate.limited'")
        laptop_id = world.sql("SELECT device_id FROM devices WHERE name = 'laptop'")[0][0]
        assert [tuple(r) for r in rows] == [("owner", "device", laptop_id)]
        assert not world.sql("SELECT 1 FROM audit WHERE action = 'cli.token.issue'")
        # The bucket is the device's own: another device of the same owner still acts.
        assert (await act(phone, "agent.list")).status_code == 200


async def test_an_unauthenticated_request_gets_401_before_its_body_is_read(world: World) -> None:
    async with served(world.settings) as api:
        for headers in ({}, {"Authorization": "Bearer ard_" + "x" * 43}):
            malformed = await api.post(
                "/owner/v1/actions/agent.list", content=b"{not json", headers={**headers, "content-type": "x"}
            )
            assert (malformed.status_code, malformed.json()) == (401, {"error": "UNAUTHENTICATED"})
            huge = await api.post(
                "/owner/v1/actions/agent.list",
                content=b"[]",
                headers={**headers, "content-length": str(world.settings.limits.http_body_bytes + 1)},
            )
            assert (huge.status_code, huge.json()) == (401, {"error": "UNAUTHENTICATED"})
        # Login has no credential to check first: its body is its credential.
        assert (await api.post("/owner/v1/login", content=b"{not json")).status_code == 400


async def test_an_action_that_fails_unexpectedly_gets_a_json_500(world: World) -> None:
    # Another process holds the write lock past the hub's busy timeout: the store's error is no RoomsError.
    impatient = replace(world.settings, limits=replace(world.settings.limits, busy_timeout_ms=50))
    async with served(impatient) as api:
        credential = (await login(api, await enroll(world))).json()["credential"]
        before = world.fingerprint()
        other = sqlite3.connect(world.db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            r = await api.post("/owner/v1/actions/token.revoke", json={"token_id": "tok_x"}, headers=bearer(credential))
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert (r.status_code, r.json()) == (500, {"error": "INTERNAL"})
        assert world.fingerprint() == before
        # The hub still answers afterwards.
        assert (await api.post("/owner/v1/actions/agent.list", headers=bearer(credential))).status_code == 200


OPERATOR_HUMAN = Human(OPERATOR)
