"""A device's listener requests draw on a bucket of their own (DESIGN §9.3, "and per device"): a real hub process
(`serve --http`, its own home) and devices enrolled with it, one of which floods `/owner/v1/listener/`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from nacl.signing import VerifyKey

from agent_rooms_mcp.encoding import b64url_decode
from agent_rooms_mcp.listen_policy import ListenPolicy
from agent_rooms_mcp.listener import HttpWakeBook
from agent_rooms_mcp.local_env import LocalEnv
from agent_rooms_mcp.remote import Device
from agent_rooms_mcp.settings import WakeSettings
from tests.conftest import World
from tests.hubprocess import serve_http
from tests.test_devices import bearer, enroll

pytestmark = pytest.mark.anyio

PER_MIN = 30  # half a request a second: a refusal asks for at most two seconds of quiet
LIMITED = {"AGENT_ROOMS_LIMIT_RATE_LISTENER_REQUESTS_PER_MIN": str(PER_MIN), "AGENT_ROOMS_LIMIT_RATE_LOCAL_CALLS": "1"}
HELLO = {"host": "laptop", "agents": [], "max_running": 1, "max_running_per_agent": 1}


@asynccontextmanager
async def limited_hub(world: World) -> AsyncIterator[httpx2.AsyncClient]:
    async with (
        serve_http(world.settings.home, env=LIMITED) as hub,
        httpx2.AsyncClient(base_url=hub.base, timeout=30) as http,
    ):
        yield http


async def device(world: World, http: httpx2.AsyncClient, name: str) -> Device:
    made = (await http.post("/owner/v1/login", json={"code": await enroll(world), "name": name})).json()
    identity = (await http.get("/owner/v1/hub")).json()
    return Device(hub=str(http.base_url).rstrip("/"), issuer_key=identity["issuer_key"],
                  deployment_id=identity["deployment_id"], **made)  # fmt: skip


async def listener_call(http: httpx2.AsyncClient, who: Device, op: str, **body: Any) -> httpx2.Response:
    return await http.post(f"/owner/v1/listener/{op}", json=body, headers=bearer(who.credential))


async def flood(http: httpx2.AsyncClient, who: Device, holder: str) -> list[httpx2.Response]:
    """Renewals as fast as one connection sends them, until the hub refuses one and a few more."""
    answers: list[httpx2.Response] = []
    while sum(a.status_code == 429 for a in answers) < 3:
        answers.append(await listener_call(http, who, "renew", holder=holder))
        assert len(answers) <= 4 * PER_MIN, "the hub never refused the flood"
    return answers


@pytest.mark.invariant(67)
async def test_a_device_flooding_its_listener_requests_gets_429_and_changes_nothing(world: World) -> None:
    async with limited_hub(world) as http:
        laptop, phone = await device(world, http, "laptop"), await device(world, http, "phone")
        assert (await listener_call(http, laptop, "hello", holder="lst_0123456789abcdef", **HELLO)).status_code == 200
        answers = await flood(http, laptop, "lst_0123456789abcdef")
        assert {a.status_code for a in answers} == {200, 429}
        for refused in (a for a in answers if a.status_code == 429):
            body = refused.json()
            assert body["code"] == "RATE_LIMITED" and "listener requests" in body["message"], body
            assert "device" in body["message"] and isinstance(body["retry_after_ms"], int)
            assert 0 < body["retry_after_ms"] <= 60_000 // PER_MIN
            assert int(refused.headers["retry-after"]) >= 1

        # Refused before anything is read or written: a new listener's hello registers nothing.
        before = world.fingerprint()
        again = await listener_call(http, laptop, "hello", holder="lst_fedcba9876543210", **HELLO)
        assert again.status_code == 429 and world.fingerprint() == before
        assert not world.sql("SELECT 1 FROM listeners WHERE holder = 'lst_fedcba9876543210'")
        # One audit row for the episode, naming the device and its bucket; not one per refusal.
        rows = world.sql("SELECT actor_kind, via, target, detail FROM audit WHERE action = 'rate.limited'")
        assert [tuple(r)[:3] for r in rows] == [("owner", "device", laptop.device_id)]
        assert '"listener_requests"' in rows[0]["detail"]

        # The bucket is the laptop's listeners' alone: the owner's actions from it and another device's
        # listener go on.
        actions = await http.post("/owner/v1/actions/agent.list", json={}, headers=bearer(laptop.credential))
        assert actions.status_code == 200, actions.text
        other = await listener_call(http, phone, "hello", holder="lst_00112233445566aa", **HELLO)
        assert other.status_code == 200, other.text


@pytest.mark.invariant(67)
async def test_a_rate_limited_listener_goes_quiet_for_the_time_the_hub_asks_then_goes_on(
    world: World, tmp_path: Path
) -> None:
    """The listener's book, past its device's bucket, sends nothing until the hub's Retry-After has passed
    (it does not spin on 429s), then its call goes through."""
    seen: list[tuple[str, float, int]] = []  # ("sent", time, 0) and ("429", time, retry_after_ms)

    async def sent(request: httpx2.Request) -> None:
        seen.append(("sent", anyio.current_time(), 0))

    async def answered(response: httpx2.Response) -> None:
        if response.status_code == 429:
            await response.aread()
            seen.append(("429", anyio.current_time(), response.json()["retry_after_ms"]))

    async with limited_hub(world) as http:
        laptop = await device(world, http, "laptop")
        rules = ListenPolicy(tmp_path / "listen.toml", tmp_path, {})
        async with httpx2.AsyncClient(event_hooks={"request": [sent], "response": [answered]}) as own:
            book = HttpWakeBook(own, laptop, VerifyKey(b64url_decode(laptop.issuer_key)), laptop.deployment_id,
                                rules, LocalEnv(tmp_path / "home"), WakeSettings())  # fmt: skip
            await book.hello()
            await flood(http, laptop, book.holder)
            seen.clear()
            held = await book.renew()  # a hello and a renewal, each refused first, then answered
        assert held == {}
    refusals = [(t, ms) for kind, t, ms in seen if kind == "429"]
    assert refusals, "the flood left the bucket full"
    # After each refusal the next request left only once the quiet the hub asked for had passed.
    for kind_at, (_, at, ms) in enumerate(seen):
        if seen[kind_at][0] == "429":
            later = [t for kind, t, _ in seen[kind_at + 1 :] if kind == "sent"]
            assert later and later[0] - at >= ms / 1000 - 0.01, seen
    # Not a request more than each refusal's one retry: two calls, each sent at most twice.
    assert sum(kind == "sent" for kind, _, _ in seen) == 2 + len(refusals) <= 4, seen
