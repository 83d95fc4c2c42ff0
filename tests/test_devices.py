"""Devices (DESIGN §9.1): enrollment codes, device credentials, and the owner API they use.

The rules are table-tested as pure functions; the codes and credentials against the hub's real HTTP app
(in-process, over ASGI). `test_remote_cli.py` runs the same through a real hub process and a second home.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest

from agent_rooms_mcp import audit, policy, remote
from agent_rooms_mcp.auth.tokens import MCP_KINDS
from agent_rooms_mcp.content import UNENCODABLE
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.http import open_http_app
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.settings import Settings
from tests.conftest import HTTP_BASE, OPERATOR, World

ALICE, BOB = "own_alice", "own_bob"
OPERATOR_HUMAN = Human(OPERATOR)
ALICE_LAPTOP = Human(audit.Actor("owner", ALICE, ALICE, "dev_laptop", via="device"), ALICE, "dev_laptop")


def _outcome(check: object) -> str:
    try:
        check()  # type: ignore[operator]
    except RoomsError as e:
        return e.code.value
    return "ok"


@pytest.mark.invariant(92)
@pytest.mark.parametrize(
    "who, owner, expected",
    [
        (OPERATOR_HUMAN, ALICE, "ok"),
        (OPERATOR_HUMAN, BOB, "ok"),
        (ALICE_LAPTOP, ALICE, "ok"),
        (ALICE_LAPTOP, BOB, "FORBIDDEN_SCOPE"),
    ],
)
def test_a_device_names_only_its_own_owner_as_the_one_acting(who: Human, owner: str, expected: str) -> None:
    assert _outcome(lambda: policy.require_self(who, owner, "someone")) == expected


@pytest.mark.invariant(82, 92)
@pytest.mark.parametrize(
    "who, owner, expected",
    [(OPERATOR_HUMAN, BOB, "ok"), (ALICE_LAPTOP, ALICE, "ok"), (ALICE_LAPTOP, BOB, "NOT_FOUND")],
)
def test_another_owners_things_look_missing_to_a_device(who: Human, owner: str, expected: str) -> None:
    assert _outcome(lambda: policy.require_own(who, owner, "agent")) == expected


@pytest.mark.parametrize(
    "who, device_owner, device_id, expected",
    [
        (OPERATOR_HUMAN, BOB, "dev_any", "ok"),
        (ALICE_LAPTOP, ALICE, "dev_laptop", "ok"),
        (ALICE_LAPTOP, ALICE, "dev_desktop", "FORBIDDEN_SCOPE"),
        (ALICE_LAPTOP, BOB, "dev_bobs", "NOT_FOUND"),
    ],
)
def test_a_device_revokes_only_itself(who: Human, device_owner: str, device_id: str, expected: str) -> None:
    assert _outcome(lambda: policy.may_revoke_device(who, device_owner, device_id)) == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("owner.add", "FORBIDDEN_SCOPE"),
        ("owner.enroll", "FORBIDDEN_SCOPE"),
        ("owner.verify", "FORBIDDEN_SCOPE"),
        ("audit.verify", "FORBIDDEN_SCOPE"),
        ("purge", "FORBIDDEN_SCOPE"),
        ("room.quarantine", "FORBIDDEN_SCOPE"),
        ("agent.env.set", "FORBIDDEN_SCOPE"),
        ("agent.add", "ok"),
        ("consent.accept", "ok"),
    ],
)
def test_operator_actions_are_refused_by_name(name: str, expected: str) -> None:
    assert _outcome(lambda: policy.require_not_operator_action(name)) == expected


# The hub's HTTP app, in-process.


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[httpx2.AsyncClient]:
    async with (
        open_http_app(settings) as app,
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=HTTP_BASE) as http,
    ):
        yield http


@pytest.fixture
async def api(world: World) -> AsyncIterator[httpx2.AsyncClient]:
    async with served(world.settings) as http:
        yield http


async def enroll(world: World, owner: str = "bob", settings: Settings | None = None) -> str:
    async with Hub.open(settings or world.settings) as hub:
        return (await hub.devices.enroll(OPERATOR, owner, HTTP_BASE)).code


async def login(http: httpx2.AsyncClient, code: str, name: str = "laptop") -> httpx2.Response:
    return await http.post("/owner/v1/login", json={"code": code, "name": name})


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@pytest.mark.invariant(91, 18)
async def test_an_enrollment_code_has_128_bits_is_hashed_at_rest_and_works_once(
    world: World, api: httpx2.AsyncClient
) -> None:
    code = await enroll(world)
    enrollment_id, _, secret = code.partition(".")
    assert len(secret) * 6 >= 128 and enrollment_id.startswith("enr_")
    first = await login(api, code)
    assert first.status_code == 200, first.text
    made = first.json()
    assert made["owner"] == "bob" and made["credential"].startswith("ard_") and made["issuer_kid"].startswith("k4.pid.")
    identity = (await api.get("/owner/v1/hub")).json()
    assert identity["issuer_kid"] == made["issuer_kid"]
    before = world.fingerprint()
    again = await login(api, code, "desktop")
    assert again.status_code == 401 and again.json() == {"error": "UNAUTHENTICATED"}
    assert world.fingerprint() == before
    raw = world.db.read_bytes() + Path(str(world.db) + "-wal").read_bytes()
    assert secret.encode() not in raw and made["credential"].encode() not in raw
    reasons = [r["reason"] for r in world.sql("SELECT reason FROM audit WHERE outcome = 'denied'")]
    assert "used_enrollment_code" in reasons


@pytest.mark.invariant(91)
async def test_five_wrong_secrets_void_a_code_even_for_the_right_one(world: World, api: httpx2.AsyncClient) -> None:
    code = await enroll(world)
    enrollment_id = code.partition(".")[0]
    for _ in range(world.settings.limits.enrollment_failures_max):
        wrong = await login(api, f"{enrollment_id}.{'A' * 32}")
        assert wrong.status_code == 401
    right = await login(api, code)
    assert right.status_code == 401 and right.json() == {"error": "UNAUTHENTICATED"}
    assert world.sql("SELECT count(*) FROM devices")[0][0] == 0
    assert world.sql("SELECT failures FROM enrollments")[0][0] == 5
    # Past a source's first few failures in a window only the counters hold the reason (auth/failures.py).
    assert "void_enrollment_code" in [r["reason"] for r in world.sql("SELECT reason FROM auth_failures")]


@pytest.mark.invariant(91)
async def test_an_expired_code_is_refused(world: World) -> None:
    # A code that lives 0 s has expired by the time anyone presents it.
    settings = replace(world.settings, limits=replace(world.settings.limits, enrollment_ttl_s=0))
    code = await enroll(world, settings=settings)
    async with served(world.settings) as http:
        refused = await login(http, code)
    assert refused.status_code == 401
    assert world.sql("SELECT count(*) FROM devices")[0][0] == 0
    assert "expired_enrollment_code" in [r["reason"] for r in world.sql("SELECT reason FROM audit")]


@pytest.mark.invariant(92)
async def test_a_device_credential_expires_after_going_unused(world: World) -> None:
    async with served(world.settings) as http:
        credential = (await login(http, await enroll(world))).json()["credential"]
        assert (await http.post("/owner/v1/actions/agent.list", json={}, headers=bearer(credential))).is_success
    idle = replace(world.settings, limits=replace(world.settings.limits, device_idle_expiry_s=0))
    async with served(idle) as http:
        refused = await http.post("/owner/v1/actions/agent.list", json={}, headers=bearer(credential))
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "device_expired" in [r["reason"] for r in world.sql("SELECT reason FROM audit")]


@pytest.mark.invariant(105, 92)
async def test_a_device_credential_is_refused_at_mcp_before_any_lookup(world: World, api: httpx2.AsyncClient) -> None:
    credential = (await login(api, await enroll(world))).json()["credential"]
    async with world.hub() as hub:
        with pytest.raises(RoomsError) as refused:
            await hub.auth.authenticate(credential, MCP_KINDS, transport="http")
    assert refused.value.code is ErrorCode.UNAUTHENTICATED
    answer = await api.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={**bearer(credential), "Accept": "application/json, text/event-stream"},
    )
    assert answer.status_code == 401 and answer.json() == {"error": "UNAUTHENTICATED"}
    assert world.sql("SELECT reason FROM audit ORDER BY seq DESC LIMIT 1")[0]["reason"] == "wrong_credential_kind"
    # And an agent's token is no device credential at the owner API.
    agent = await api.post("/owner/v1/actions/agent.list", json={}, headers=bearer(world.tokens["bob-claude"]))
    assert agent.status_code == 401


@pytest.mark.invariant(92, 82)
async def test_a_device_acts_for_its_owner_only_and_changes_nothing_when_refused(
    world: World, api: httpx2.AsyncClient
) -> None:
    credential = (await login(api, await enroll(world))).json()["credential"]

    async def act(action: str, **args: object) -> httpx2.Response:
        return await api.post(f"/owner/v1/actions/{action}", json=args, headers=bearer(credential))

    before = world.fingerprint()
    refusals = {
        "agent.add as alice": await act("agent.add", handle="x", owner="alice", tool="claude", scopes="read"),
        "token.issue of alice's agent": await act("token.issue", agent="alice-claude", ttl_s=60),
        "token.revoke of alice's token": await act("token.revoke", token_id=world.token_ids["alice-claude"]),
        "grant.add from alice": await act("grant.add", giver="alice", taker="bob"),
        "consent.mode for alice": await act("consent.mode", room="shared", mode="approve_all", owner="alice"),
        "room.add into alice's lobby": await act("room.add", room="lobby", agent="bob-claude"),
        "agent.stop of alice's agent": await act("agent.stop", handle="alice-claude"),
        "room.create with alice's agent": await act("room.create", name="mine", owner="bob", agents=["alice-claude"]),
        "invite.accept for alice's agent": await act(
            "invite.accept", code="inv_" + "x" * 30, owner="bob", agents=["alice-claude"]
        ),
        "owner.add": await act("owner.add", handle="mallory"),
        "workdir": await act("agent.add", handle="y", owner="bob", tool="claude", scopes="read", workdir="/"),
        # A hub-spawned run's workdir and sandbox are the operator's (DESIGN §5), even for bob's own agent.
        "set workdir": await act("agent.set", handle="bob-claude", workdir="/"),
        "sandbox off": await act("agent.set", handle="bob-claude", sandbox=False),
        "agent.set of alice's agent": await act("agent.set", handle="alice-claude", tool="codex"),
    }
    codes = {what: (r.status_code, r.json()["code"]) for what, r in refusals.items()}
    assert codes == {
        "agent.add as alice": (403, "FORBIDDEN_SCOPE"),
        "token.issue of alice's agent": (404, "NOT_FOUND"),
        "token.revoke of alice's token": (404, "NOT_FOUND"),
        "grant.add from alice": (403, "FORBIDDEN_SCOPE"),
        "consent.mode for alice": (403, "FORBIDDEN_SCOPE"),
        "room.add into alice's lobby": (404, "NOT_FOUND"),
        "agent.stop of alice's agent": (404, "NOT_FOUND"),
        "room.create with alice's agent": (404, "NOT_FOUND"),
        "invite.accept for alice's agent": (404, "NOT_FOUND"),
        "owner.add": (403, "FORBIDDEN_SCOPE"),
        "workdir": (403, "FORBIDDEN_SCOPE"),
        "set workdir": (403, "FORBIDDEN_SCOPE"),
        "sandbox off": (403, "FORBIDDEN_SCOPE"),
        "agent.set of alice's agent": (404, "NOT_FOUND"),
    }
    assert world.fingerprint() == before
    denials = world.sql("SELECT * FROM audit WHERE outcome = 'denied' AND via = 'device'")
    assert len(denials) == len(refusals) and {r["actor_kind"] for r in denials} == {"owner"}

    # Missing and another owner's look the same (invariant 82): the same answer, but for the reference the
    # device itself named, which it is told back (its CLI says it, as the hub's does).
    def but_ref(answer: httpx2.Response, ref: str) -> dict[str, Any]:
        body: dict[str, Any] = answer.json()
        assert body["missing"]["ref"] == ref, body
        return {**body, "missing": {**body["missing"], "ref": "REF"}}

    alices_token = world.token_ids["alice-claude"]
    missing_token = await act("token.revoke", token_id="tok_" + "x" * 22)
    assert but_ref(missing_token, "tok_" + "x" * 22) == but_ref(refusals["token.revoke of alice's token"], alices_token)
    nobody = await act("room.create", name="mine", owner="bob", agents=["nobody-here"])
    assert but_ref(nobody, "nobody-here") == but_ref(refusals["room.create with alice's agent"], "alice-claude")
    listed = (await act("agent.list")).json()["agents"]
    assert {a["owner"] for a in listed} == {"bob"}
    rooms = {r["name"] for r in (await act("room.list")).json()["rooms"]}
    assert rooms == {"shared", "bobs-den"}
    tail = (await act("audit.tail", count=1000)).json()["rows"]
    assert tail and {r["owner_id"] for r in tail} == {world.sql("SELECT owner_id FROM owners WHERE handle='bob'")[0][0]}


@pytest.mark.invariant(57)
async def test_the_chain_covers_via_and_old_rows_still_verify(world: World, api: httpx2.AsyncClient) -> None:
    await login(api, await enroll(world))
    conn = sqlite3.connect(world.db)
    conn.row_factory = sqlite3.Row
    try:
        assert audit.verify(conn).ok
        rows = conn.execute("SELECT * FROM audit ORDER BY seq").fetchall()
        assert any(r["via"] is None for r in rows) and any(r["via"] == "device" for r in rows)
        # Blanking a row's `via` breaks the chain at that row.
        row = next(r for r in rows if r["via"] == "device")
        edited = {**dict(row), "via": None}
        assert audit.row_hash(bytes(row["prev_hash"]), row["seq"], edited) != bytes(row["row_hash"])
    finally:
        conn.close()


async def test_the_owner_api_names_a_bad_argument_and_an_unknown_action(world: World, api: httpx2.AsyncClient) -> None:
    credential = (await login(api, await enroll(world))).json()["credential"]
    before = world.fingerprint()
    extra = await api.post("/owner/v1/actions/agent.list", json={"everyone": True}, headers=bearer(credential))
    assert extra.status_code == 400 and extra.json()["code"] == "INVALID_ARGUMENT"
    assert extra.json()["message"].startswith("everyone:")
    ttl = await api.post("/owner/v1/actions/token.issue", json={"agent": "bob-claude"}, headers=bearer(credential))
    assert ttl.json()["code"] == "INVALID_ARGUMENT" and ttl.json()["message"].startswith("ttl_s:")
    unknown = await api.post("/owner/v1/actions/agent.delete_everything", json={}, headers=bearer(credential))
    assert unknown.status_code == 404 and unknown.json()["code"] == "NOT_FOUND"
    assert (await api.get("/owner/v1/actions/agent.list", headers=bearer(credential))).status_code == 405
    assert world.fingerprint() == before


@pytest.mark.invariant(18, 81)
async def test_what_a_device_sends_is_bounded_and_never_lands_raw_in_the_audit(
    world: World, api: httpx2.AsyncClient
) -> None:
    """Found by a hostile review: an unknown action's name went into the audit row's action as sent, and a
    lifetime past what a timedelta holds crashed the request instead of naming the field."""
    credential = (await login(api, await enroll(world))).json()["credential"]
    before = world.fingerprint()
    hostile = await api.post(
        "/owner/v1/actions/art_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%1b%5b31mEVIL%0a",
        json={},
        headers=bearer(credential),
    )
    assert hostile.status_code == 404 and hostile.json()["code"] == "NOT_FOUND"
    row = world.sql("SELECT action, target FROM audit ORDER BY seq DESC LIMIT 1")[0]
    assert row["action"] == "cli.unknown"
    assert "art_" not in (row["target"] or "") and "\x1b" not in (row["target"] or "")
    huge = await api.post(
        "/owner/v1/actions/token.issue", json={"agent": "bob-claude", "ttl_s": 10**17}, headers=bearer(credential)
    )
    assert huge.status_code == 400 and huge.json()["code"] == "INVALID_ARGUMENT"
    assert world.fingerprint() == before


def test_a_hub_url_ending_in_mcp_is_taken_as_the_hub() -> None:
    """People paste the MCP URL they already use; `login` and `--hub` reach the owner API beside it."""
    assert remote.hub_url("https://hub.example.org/mcp") == "https://hub.example.org"
    assert remote.hub_url("https://hub.example.org/rooms/mcp/") == "https://hub.example.org/rooms"
    assert remote.hub_url("http://127.0.0.1:8765") == "http://127.0.0.1:8765"


async def test_a_lone_surrogate_in_an_owner_actions_arguments_is_refused_naming_the_field(
    world: World, api: httpx2.AsyncClient
) -> None:
    credential = (await login(api, await enroll(world))).json()["credential"]
    before = world.fingerprint()
    # JSON's escape of a lone surrogate: what a client in another language may send; Python's cannot.
    body = b'{"handle": "bob-new", "owner": "bob", "tool": "claude", "scopes": "read\\ud800"}'
    refused = await api.post(
        "/owner/v1/actions/agent.add", content=body, headers={**bearer(credential), "Content-Type": "application/json"}
    )
    assert refused.status_code == 400, refused.text
    assert refused.json() == {"code": "INVALID_ARGUMENT", "message": f"scopes: {UNENCODABLE}"}
    assert world.fingerprint() == before
