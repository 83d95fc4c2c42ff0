"""Authentication on every transport (DESIGN §2, §7): in-memory, a real stdio subprocess, and HTTP in-process.

Every failure gets one public answer whatever its reason, changes nothing, and leaves exactly one audit row
that holds the reason. Credentials are broken the way an attacker or time would break them: in the real
database, with real keys; nothing of ours is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult
from nacl.signing import SigningKey

from agent_rooms_mcp.auth.paseto import sign_v4_public
from agent_rooms_mcp.auth.passports import Claims, PassportIssuer
from agent_rooms_mcp.clock import iso
from agent_rooms_mcp.encoding import b64url_decode
from agent_rooms_mcp.home import load_issuer_key, write_private_file
from agent_rooms_mcp.http import open_http_app
from agent_rooms_mcp.principals import Scope
from agent_rooms_mcp.server import TOOLS
from tests.conftest import OPERATOR, World
from tests.tool_errors import error_code, error_detail

REPO = Path(__file__).resolve().parent.parent
ALICE = "alice-claude"
DENIED_TEXT = "UNAUTHENTICATED: invalid or revoked credentials"
DENIED_BODY = {"code": "UNAUTHENTICATED", "message": "invalid or revoked credentials"}
SIG_LEN = 64

# --------------------------------------------------------------------------------------------------------------
# Small helpers over the real database and the hub's real key
# --------------------------------------------------------------------------------------------------------------


def write_sql(world: World, query: str, args: tuple[Any, ...] = ()) -> None:
    """One committed statement on the hub's database, as another process (or an attacker with the file) would."""
    conn = sqlite3.connect(world.db)
    try:
        with conn:
            assert conn.execute(query, args).rowcount >= 1, query
    finally:
        conn.close()


def last_audit_seq(world: World) -> int:
    return int(world.sql("SELECT coalesce(max(seq), 0) FROM audit")[0][0])


def audit_since(world: World, seq: int) -> list[sqlite3.Row]:
    return world.sql("SELECT * FROM audit WHERE seq > ? ORDER BY seq", (seq,))


def agent_row(world: World, handle: str) -> sqlite3.Row:
    return world.sql("SELECT * FROM agents WHERE handle = ?", (handle,))[0]


def deployment_id(world: World) -> str:
    return str(world.sql("SELECT value FROM meta WHERE key = 'deployment_id'")[0][0])


def hub_issuer(world: World, deployment: str | None = None, key: SigningKey | None = None) -> PassportIssuer:
    """An issuer with the hub's own key and deployment id unless told otherwise."""
    key = key or load_issuer_key(world.settings.issuer_key_path)
    return PassportIssuer(key, deployment or deployment_id(world))


def passport_of(world: World, handle: str) -> str:
    query = "SELECT p.passport FROM tokens t JOIN passports p ON p.jti = t.jti WHERE t.token_id = ?"
    return str(world.sql(query, (world.token_ids[handle],))[0][0])


def replace_passport_text(world: World, handle: str, passport: str) -> None:
    query = "UPDATE passports SET passport = ? WHERE jti = (SELECT jti FROM tokens WHERE token_id = ?)"
    write_sql(world, query, (passport, world.token_ids[handle]))


def bind_passport(world: World, handle: str, passport: str, jti: str, exp: datetime) -> None:
    """Store `passport` as a new row and point `handle`'s token at it, so its jti, agent and owner all match:
    whatever is refused then is refused for the one defect the passport was built with."""
    agent_id = agent_row(world, handle)["agent_id"]
    now = iso(datetime.now(UTC))
    write_sql(
        world,
        "INSERT INTO passports (jti, agent_id, passport, issued_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        (jti, agent_id, passport, now, iso(exp)),
    )
    write_sql(world, "UPDATE tokens SET jti = ? WHERE token_id = ?", (jti, world.token_ids[handle]))


def issue_and_bind(
    world: World,
    handle: str,
    issuer: PassportIssuer,
    *,
    now: datetime | None = None,
    ttl: timedelta = timedelta(hours=1),
) -> str:
    """A passport for `handle`'s agent from `issuer`, bound to `handle`'s token; returns that token."""
    passport, claims = issue_for(world, handle, issuer, now=now, ttl=ttl)
    bind_passport(world, handle, passport, claims.jti, claims.exp)
    return world.tokens[handle]


def issue_for(
    world: World, handle: str, issuer: PassportIssuer, *, now: datetime | None = None, ttl: timedelta
) -> tuple[str, Claims]:
    """A passport from `issuer` carrying `handle`'s agent, owner, tool and current epoch."""
    agent = agent_row(world, handle)
    return issuer.issue(
        agent_id=agent["agent_id"],
        owner_id=agent["owner_id"],
        tool=agent["tool"],
        epoch=agent["cred_epoch"],
        ttl=ttl,
        now=now,
    )


def flip_signature(passport: str) -> str:
    """The same claims and footer, with one bit of the Ed25519 signature flipped."""
    header, version, body, *footer = passport.split(".")
    raw = bytearray(b64url_decode(body))
    raw[-SIG_LEN] ^= 0x01
    flipped = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    return ".".join([header, version, flipped, *footer])


def assert_denied(r: CallToolResult) -> None:
    assert r.is_error
    assert [c.text for c in r.content] == [DENIED_TEXT]  # type: ignore[union-attr]
    assert error_detail(r) == DENIED_BODY


def assert_one_denial(world: World, seq: int, reason: str, *, transport: str) -> sqlite3.Row:
    rows = audit_since(world, seq)
    assert [(r["action"], r["outcome"], r["reason"]) for r in rows] == [("auth.authenticate", "denied", reason)]
    assert json.loads(rows[0]["detail"]) == {"transport": transport}
    return rows[0]


# --------------------------------------------------------------------------------------------------------------
# Broken credentials: each setup breaks one thing and returns the credential to present
# --------------------------------------------------------------------------------------------------------------

Setup = Callable[[World], Awaitable[str | None]]


async def no_credential(world: World) -> str | None:
    return None


async def empty_credential(world: World) -> str | None:
    return ""


async def garbled_prefix(world: World) -> str | None:
    return "art_x"


async def random_text(world: World) -> str | None:
    return "correct horse battery staple"


async def valid_token_with_a_trailing_character(world: World) -> str | None:
    return world.tokens[ALICE] + "A"


async def unknown_token(world: World) -> str | None:
    return "art_" + secrets.token_urlsafe(32)


async def revoked_token(world: World) -> str | None:
    async with world.hub() as hub:
        await hub.accounts.revoke_token(OPERATOR, world.token_ids[ALICE])
    return world.tokens[ALICE]


async def expired_token(world: World) -> str | None:
    past = iso(datetime.now(UTC) - timedelta(minutes=1))
    write_sql(world, "UPDATE tokens SET expires_at = ? WHERE token_id = ?", (past, world.token_ids[ALICE]))
    return world.tokens[ALICE]


async def passport_with_flipped_signature(world: World) -> str | None:
    replace_passport_text(world, ALICE, flip_signature(passport_of(world, ALICE)))
    return world.tokens[ALICE]


async def passport_from_another_issuer_key(world: World) -> str | None:
    return issue_and_bind(world, ALICE, hub_issuer(world, key=SigningKey.generate()))


async def passport_signed_for_another_deployment(world: World) -> str | None:
    # The hub's own key, another implicit assertion: the signature cannot verify here.
    return issue_and_bind(world, ALICE, hub_issuer(world, deployment="dep_other"))


async def passport_claiming_another_deployment(world: World) -> str | None:
    # Signed with our key under our implicit assertion, but its iss/aud name another deployment.
    token, claims = issue_for(world, ALICE, hub_issuer(world, deployment="dep_other"), ttl=timedelta(hours=1))
    _, _, body, footer = token.split(".")
    message = b64url_decode(body)[:-SIG_LEN]
    key = load_issuer_key(world.settings.issuer_key_path)
    forged = sign_v4_public(key, message, footer=b64url_decode(footer), implicit=deployment_id(world).encode())
    bind_passport(world, ALICE, forged, claims.jti, claims.exp)
    return world.tokens[ALICE]


async def expired_passport(world: World) -> str | None:
    now = datetime.now(UTC) - timedelta(hours=2)
    return issue_and_bind(world, ALICE, hub_issuer(world), now=now, ttl=timedelta(hours=1))


async def passport_not_yet_valid(world: World) -> str | None:
    return issue_and_bind(world, ALICE, hub_issuer(world), now=datetime.now(UTC) + timedelta(minutes=5))


async def stale_epoch(world: World) -> str | None:
    write_sql(world, "UPDATE agents SET cred_epoch = cred_epoch + 1 WHERE handle = ?", (ALICE,))
    return world.tokens[ALICE]


async def passport_with_local_header(world: World) -> str | None:
    replace_passport_text(world, ALICE, passport_of(world, ALICE).replace("v4.public.", "v4.local.", 1))
    return world.tokens[ALICE]


async def passport_of_another_agent(world: World) -> str | None:
    query = "UPDATE tokens SET jti = (SELECT jti FROM tokens WHERE token_id = ?) WHERE token_id = ?"
    write_sql(world, query, (world.token_ids["alice-codex"], world.token_ids[ALICE]))
    return world.tokens[ALICE]


async def deleted_agent(world: World) -> str | None:
    write_sql(world, "UPDATE agents SET status = 'deleted' WHERE handle = ?", (ALICE,))
    return world.tokens[ALICE]


# (setup, audit reason, whether the audit row can name the agent whose credential failed)
AUTH_CASES = [
    pytest.param(no_credential, "missing_credential", False, id="no-credential"),
    pytest.param(empty_credential, "missing_credential", False, id="empty-credential"),
    pytest.param(garbled_prefix, "malformed_credential", False, id="garbled-art_x"),
    pytest.param(random_text, "malformed_credential", False, id="random-text"),
    pytest.param(valid_token_with_a_trailing_character, "malformed_credential", False, id="token-plus-one-char"),
    pytest.param(unknown_token, "unknown_token", False, id="unknown-token"),
    pytest.param(revoked_token, "token_revoked", True, id="revoked-token"),
    pytest.param(expired_token, "token_expired", True, id="expired-token"),
    pytest.param(passport_with_flipped_signature, "passport_bad_signature", True, id="flipped-signature"),
    pytest.param(passport_from_another_issuer_key, "unknown_kid", True, id="another-issuer-key"),
    pytest.param(passport_signed_for_another_deployment, "passport_bad_signature", True, id="other-implicit"),
    pytest.param(passport_claiming_another_deployment, "wrong_deployment", True, id="other-iss-aud"),
    pytest.param(expired_passport, "passport_expired", True, id="expired-passport"),
    pytest.param(passport_not_yet_valid, "passport_not_yet_valid", True, id="passport-not-yet-valid"),
    pytest.param(stale_epoch, "stale_epoch", True, id="stale-epoch"),
    pytest.param(passport_with_local_header, "passport_bad_header", True, id="v4.local-header"),
    pytest.param(passport_of_another_agent, "passport_mismatch", True, id="passport-of-another-agent"),
    pytest.param(deleted_agent, "agent_inactive", True, id="deleted-agent"),
]


# --------------------------------------------------------------------------------------------------------------
# In-memory (the stdio code path without the pipe)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.invariant(1, 2, 3, 4, 5, 6, 7, 8, 14)
@pytest.mark.parametrize(("setup", "reason", "actor_known"), AUTH_CASES)
async def test_every_bad_credential_gets_the_same_answer_changes_nothing_and_audits_its_reason(
    world: World, mode: str, setup: Setup, reason: str, actor_known: bool
) -> None:
    async with world.client(None, mode) as anonymous:
        reference = await anonymous.call_tool("whoami", {})
    credential = await setup(world)
    before, seq = world.fingerprint(), last_audit_seq(world)
    async with world.client(None, mode, token=credential) as c:
        r = await c.call_tool("whoami", {})
    assert_denied(r)
    # Identical to the answer for no credential at all, down to every field of the result.
    assert r.model_dump() == reference.model_dump()
    assert world.fingerprint() == before
    row = assert_one_denial(world, seq, reason, transport="stdio")
    if actor_known:
        agent = agent_row(world, ALICE)
        assert (row["actor_kind"], row["actor_id"], row["owner_id"], row["cred_id"]) == (
            "agent",
            agent["agent_id"],
            agent["owner_id"],
            world.token_ids[ALICE],
        )
    else:
        assert (row["actor_kind"], row["actor_id"], row["cred_id"]) == ("anonymous", None, None)


@pytest.mark.invariant(4)
@pytest.mark.parametrize("header", ["v4.local.", "v3.public.", "v2.public.", "V4.public.", "v4.Public.", "v4.public"])
async def test_a_passport_with_any_header_but_v4_public_is_refused(world: World, header: str) -> None:
    replace_passport_text(world, ALICE, header + passport_of(world, ALICE).removeprefix("v4.public."))
    before, seq = world.fingerprint(), last_audit_seq(world)
    async with world.client(ALICE) as c:
        r = await c.call_tool("whoami", {})
    assert_denied(r)
    assert world.fingerprint() == before
    assert_one_denial(world, seq, "passport_bad_header", transport="stdio")


@pytest.mark.invariant(6)
@pytest.mark.parametrize(
    ("shift", "ttl"),
    [
        pytest.param(timedelta(0), timedelta(hours=1), id="fresh"),
        pytest.param(-timedelta(hours=1, seconds=2), timedelta(hours=1), id="expired-2s-ago-within-skew"),
        pytest.param(timedelta(seconds=2), timedelta(hours=1), id="valid-in-2s-within-skew"),
    ],
)
async def test_a_passport_the_hub_itself_signed_is_accepted_within_the_clock_skew(
    world: World, shift: timedelta, ttl: timedelta
) -> None:
    # The control for the forged cases: the same construction with nothing wrong in it is accepted.
    token = issue_and_bind(world, ALICE, hub_issuer(world), now=datetime.now(UTC) + shift, ttl=ttl)
    async with world.client(None, token=token) as c:
        r = await c.call_tool("whoami", {})
    assert not r.is_error, r.content
    assert r.structured_content["agent"]["handle"] == ALICE


@pytest.mark.invariant(14, 15)
@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        pytest.param("post_message", {"room": 5, "text": ""}, id="wrong-types"),
        pytest.param("post_message", {"room": "lobby"}, id="missing-field"),
        pytest.param("post_message", {"room": "lobby", "text": "x" * (64 * 1024)}, id="too-large"),
        pytest.param("read_messages", {"room": "lobby", "limit": -1}, id="out-of-range"),
        pytest.param("no_such_tool", {}, id="unknown-tool"),
    ],
)
async def test_authentication_runs_before_any_argument_is_parsed(
    world: World, mode: str, tool: str, arguments: dict[str, Any]
) -> None:
    before, seq = world.fingerprint(), last_audit_seq(world)
    async with world.client(None, mode, token="art_x") as c:
        r = await c.call_tool(tool, arguments)
    assert_denied(r)
    assert world.fingerprint() == before
    assert_one_denial(world, seq, "malformed_credential", transport="stdio")


@pytest.mark.invariant(15)
async def test_a_token_in_a_tool_argument_or_in_meta_is_never_accepted(world: World, mode: str) -> None:
    token = world.tokens[ALICE]
    seq = last_audit_seq(world)
    async with world.client(None, mode) as c:
        in_argument = await c.call_tool("post_message", {"room": "lobby", "text": "hi", "token": token})
        in_meta = await c.call_tool("whoami", {}, meta={"authorization": f"Bearer {token}", "token": token})
    assert_denied(in_argument)
    assert_denied(in_meta)
    assert [r["reason"] for r in audit_since(world, seq)] == ["missing_credential"] * 2
    assert world.sql("SELECT count(*) FROM messages")[0][0] == 0


@pytest.mark.invariant(8, 16)
async def test_revoking_one_token_fails_it_on_the_next_call_while_the_agents_other_token_works(
    world: World, mode: str
) -> None:
    async with world.hub() as hub:
        second = await hub.accounts.issue_token(OPERATOR, ALICE, timedelta(days=1))
    async with world.client(ALICE, mode) as first, world.client(None, mode, token=second.token) as other:
        assert not (await first.call_tool("whoami", {})).is_error
        assert not (await other.call_tool("whoami", {})).is_error
        async with world.hub() as hub:
            await hub.accounts.revoke_token(OPERATOR, world.token_ids[ALICE])
        seq = last_audit_seq(world)
        revoked = await first.call_tool("post_message", {"room": "lobby", "text": "after revoke"})
        row = assert_one_denial(world, seq, "token_revoked", transport="stdio")
        still = await other.call_tool("post_message", {"room": "lobby", "text": "from the other token"})
    assert_denied(revoked)
    assert row["cred_id"] == world.token_ids[ALICE]
    assert not still.is_error, still.content
    assert [r["text"] for r in world.sql("SELECT text FROM messages")] == ["from the other token"]


@pytest.mark.invariant(26)
async def test_a_scope_change_takes_effect_on_the_next_call_of_an_open_session(world: World, mode: str) -> None:
    async with world.client(ALICE, mode) as c:
        assert not (await c.call_tool("post_message", {"room": "lobby", "text": "one"})).is_error
        async with world.hub() as hub:
            await hub.accounts.set_scopes(OPERATOR, ALICE, frozenset({Scope.READ, Scope.TASK}))
        refused = await c.call_tool("post_message", {"room": "lobby", "text": "two"})
        me = await c.call_tool("whoami", {})
        readable = await c.call_tool("read_messages", {"room": "lobby"})
        async with world.hub() as hub:
            await hub.accounts.set_scopes(OPERATOR, ALICE, frozenset({Scope.READ, Scope.POST}))
        again = await c.call_tool("post_message", {"room": "lobby", "text": "three"})
    assert refused.is_error and error_code(refused) == "FORBIDDEN_SCOPE"
    assert me.structured_content["scopes"] == ["read", "task"]
    assert [m["text"] for m in readable.structured_content["messages"]] == ["one"]
    assert not again.is_error, again.content
    assert [r["text"] for r in world.sql("SELECT text FROM messages ORDER BY seq")] == ["one", "three"]


@pytest.mark.invariant(26)
async def test_a_membership_change_takes_effect_on_the_next_call_of_an_open_session(world: World, mode: str) -> None:
    async with world.client("alice-codex", mode) as c:
        before = await c.call_tool("read_messages", {"room": "shared"})
        async with world.hub() as hub:
            await hub.rooms.add_agent(OPERATOR, "shared", "alice-codex")
        after = await c.call_tool("read_messages", {"room": "shared"})
    assert before.is_error and error_code(before) == "NOT_FOUND"
    assert not after.is_error, after.content


# --------------------------------------------------------------------------------------------------------------
# stdio: the real server as a subprocess (each start costs about a second and a half; keep these few)
# --------------------------------------------------------------------------------------------------------------


def token_file(world: World, token: str, name: str = "agent.token") -> Path:
    path = world.settings.tokens_dir / name
    write_private_file(path, token.encode("ascii"))
    return path


@asynccontextmanager
async def stdio_session(world: World, token_path: Path, errlog: TextIO, mode: str = "auto") -> AsyncIterator[Client]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_ROOMS_")}
    env |= {"AGENT_ROOMS_HOME": str(world.settings.home), "AGENT_ROOMS_TOKEN_FILE": str(token_path)}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "agent_rooms_mcp", "serve"], env=env, cwd=str(REPO)
    )
    async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
        yield client


@pytest.mark.invariant(8)
async def test_a_token_revoked_mid_session_fails_the_next_stdio_call(world: World, mode: str, tmp_path: Path) -> None:
    path = token_file(world, world.tokens[ALICE])
    with (tmp_path / "stderr.log").open("w") as errlog, anyio.fail_after(60):
        async with stdio_session(world, path, errlog, mode) as c:
            me = await c.call_tool("whoami", {})
            async with world.hub() as hub:
                await hub.accounts.revoke_token(OPERATOR, world.token_ids[ALICE])
            before, seq = world.fingerprint(), last_audit_seq(world)
            after = await c.call_tool("whoami", {})
            assert world.fingerprint() == before
            assert_one_denial(world, seq, "token_revoked", transport="stdio")
    assert not me.is_error, me.content
    assert me.structured_content["agent"]["handle"] == ALICE
    assert_denied(after)


async def test_a_stdio_server_with_a_group_readable_token_file_starts_and_explains_itself(
    world: World, tmp_path: Path
) -> None:
    path = token_file(world, world.tokens[ALICE])
    path.chmod(0o640)
    log = tmp_path / "stderr.log"
    with log.open("w") as errlog, anyio.fail_after(60):
        async with stdio_session(world, path, errlog) as c:
            tools = await c.list_tools()
            seq = last_audit_seq(world)
            r = await c.call_tool("whoami", {})
    assert {t.name for t in tools.tools} == {tool.__name__ for tool, _ in TOOLS}
    assert_denied(r)
    assert_one_denial(world, seq, "missing_credential", transport="stdio")
    lines = [line for line in log.read_text().splitlines() if "stdio.no_credential" in line]
    assert len(lines) == 1, log.read_text()
    assert str(path) in lines[0] and "readable by group or others" in lines[0]
    assert world.tokens[ALICE] not in log.read_text()


# --------------------------------------------------------------------------------------------------------------
# HTTP: the ASGI app in-process, raw requests and real SDK clients
# --------------------------------------------------------------------------------------------------------------

BASE = "http://127.0.0.1:8765"
LEGACY_VERSION = "2025-11-25"
JSON_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
UNAUTHENTICATED_BODY = {"error": "UNAUTHENTICATED"}


def rpc(method: str, params: dict[str, Any] | None = None, rpc_id: int | None = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if rpc_id is not None:
        message["id"] = rpc_id
    return message


INITIALIZE = rpc(
    "initialize",
    {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "test_auth", "version": "0"}},
)


def tool_call(name: str, arguments: dict[str, Any], rpc_id: int = 2) -> dict[str, Any]:
    return rpc("tools/call", {"name": name, "arguments": arguments}, rpc_id)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def in_session(token: str, session: str) -> dict[str, str]:
    return {**JSON_HEADERS, **bearer(token), "mcp-session-id": session, "mcp-protocol-version": LEGACY_VERSION}


@asynccontextmanager
async def http_transport(world: World) -> AsyncIterator[httpx2.ASGITransport]:
    async with open_http_app(world.settings) as app:
        yield httpx2.ASGITransport(app=app)


@asynccontextmanager
async def raw_http(world: World) -> AsyncIterator[httpx2.AsyncClient]:
    async with http_transport(world) as t, httpx2.AsyncClient(transport=t, base_url=BASE) as client:
        yield client


async def open_legacy_session(client: httpx2.AsyncClient, token: str) -> str:
    """The initialize handshake by hand, so the session id is ours to present with other credentials."""
    r = await client.post("/mcp", json=INITIALIZE, headers={**JSON_HEADERS, **bearer(token)})
    assert r.status_code == 200, r.text
    session = r.headers["mcp-session-id"]
    done = await client.post(
        "/mcp", json=rpc("notifications/initialized", rpc_id=None), headers=in_session(token, session)
    )
    assert done.status_code == 202, done.text
    return session


def assert_401(r: httpx2.Response) -> None:
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json() == UNAUTHENTICATED_BODY


def messages_posted(world: World) -> int:
    return int(world.sql("SELECT count(*) FROM messages")[0][0])


async def wrong_scheme_with_a_valid_token(world: World) -> str | None:
    return f"Basic {world.tokens[ALICE]}"


async def basic_credentials(world: World) -> str | None:
    return "Basic " + base64.b64encode(b"alice:secret").decode()


async def token_without_a_scheme(world: World) -> str | None:
    return world.tokens[ALICE]


def as_bearer(setup: Setup) -> Setup:
    async def header(world: World) -> str | None:
        credential = await setup(world)
        return None if credential is None else f"Bearer {credential}"

    header.__name__ = setup.__name__
    return header


# (Authorization header maker, audit reason)
HTTP_AUTH_CASES = [
    pytest.param(no_credential, "missing_credential", id="no-header"),
    pytest.param(wrong_scheme_with_a_valid_token, "missing_credential", id="basic-scheme-valid-token"),
    pytest.param(basic_credentials, "missing_credential", id="basic-credentials"),
    pytest.param(token_without_a_scheme, "missing_credential", id="no-scheme"),
    pytest.param(as_bearer(empty_credential), "missing_credential", id="empty-bearer"),
    pytest.param(as_bearer(garbled_prefix), "malformed_credential", id="garbled"),
    pytest.param(as_bearer(unknown_token), "unknown_token", id="unknown-token"),
    pytest.param(as_bearer(revoked_token), "token_revoked", id="revoked-token"),
    pytest.param(as_bearer(expired_token), "token_expired", id="expired-token"),
    pytest.param(as_bearer(passport_with_flipped_signature), "passport_bad_signature", id="flipped-signature"),
    pytest.param(as_bearer(stale_epoch), "stale_epoch", id="stale-epoch"),
]


@pytest.mark.invariant(1, 2, 8, 14)
@pytest.mark.parametrize(("make_header", "reason"), HTTP_AUTH_CASES)
async def test_every_bad_http_credential_gets_the_same_401_and_audits_its_reason(
    world: World, make_header: Setup, reason: str
) -> None:
    header = await make_header(world)
    headers = JSON_HEADERS if header is None else {**JSON_HEADERS, "Authorization": header}
    before, seq = world.fingerprint(), last_audit_seq(world)
    async with raw_http(world) as client:
        r = await client.post("/mcp", json=tool_call("post_message", {"room": "lobby", "text": "hi"}), headers=headers)
        assert_401(r)
        assert world.fingerprint() == before
        assert_one_denial(world, seq, reason, transport="http")
        reference = await client.post("/mcp", json=INITIALIZE, headers=JSON_HEADERS)
    assert (r.status_code, r.content, r.headers["www-authenticate"], r.headers["content-type"]) == (
        reference.status_code,
        reference.content,
        reference.headers["www-authenticate"],
        reference.headers["content-type"],
    )


async def test_a_valid_bearer_token_opens_an_http_session(world: World) -> None:
    # The control for the 401 cases: the same request with the right header goes through.
    async with raw_http(world) as client:
        r = await client.post("/mcp", json=INITIALIZE, headers={**JSON_HEADERS, **bearer(world.tokens[ALICE])})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["serverInfo"]["name"] == "agent-rooms"


@pytest.mark.invariant(15)
@pytest.mark.parametrize("param", ["access_token", "token"])
@pytest.mark.parametrize("with_header", [False, True], ids=["query-only", "query-and-header"])
async def test_a_token_in_the_query_string_is_refused(world: World, param: str, with_header: bool) -> None:
    token = world.tokens[ALICE]
    headers = {**JSON_HEADERS, **bearer(token)} if with_header else JSON_HEADERS
    before, seq = world.fingerprint(), last_audit_seq(world)
    async with raw_http(world) as client:
        r = await client.post(f"/mcp?{param}={token}", json=INITIALIZE, headers=headers)
    assert_401(r)
    assert "mcp-session-id" not in r.headers
    assert world.fingerprint() == before
    row = assert_one_denial(world, seq, "credential_in_query", transport="http")
    assert token not in str(dict(row))


async def sessioned_post(world: World, client: httpx2.AsyncClient) -> tuple[str, dict[str, str]]:
    session = await open_legacy_session(client, world.tokens[ALICE])
    return session, in_session(world.tokens[ALICE], session)


@pytest.mark.invariant(19)
@pytest.mark.parametrize(
    ("header", "value", "status", "body"),
    [
        pytest.param("Origin", "http://evil.example", 403, {"error": "FORBIDDEN_ORIGIN"}, id="foreign-origin"),
        pytest.param("Origin", "http://127.0.0.1.evil.example", 403, {"error": "FORBIDDEN_ORIGIN"}, id="lookalike"),
        pytest.param("Origin", "https://evil.example:8765", 403, {"error": "FORBIDDEN_ORIGIN"}, id="https-origin"),
        pytest.param("Origin", "null", 403, {"error": "FORBIDDEN_ORIGIN"}, id="null-origin"),
        pytest.param("Host", "evil.example:8765", 421, {"error": "INVALID_HOST"}, id="foreign-host"),
        pytest.param("Host", "127.0.0.1.evil.example:8765", 421, {"error": "INVALID_HOST"}, id="lookalike-host"),
    ],
)
async def test_a_foreign_origin_or_host_is_refused_before_any_tool_runs(
    world: World, header: str, value: str, status: int, body: dict[str, str]
) -> None:
    call = tool_call("post_message", {"room": "lobby", "text": "through a rebinding page"})
    async with raw_http(world) as client:
        _, headers = await sessioned_post(world, client)
        before, seq = world.fingerprint(), last_audit_seq(world)
        r = await client.post("/mcp", json=call, headers={**headers, header: value})
        assert (r.status_code, r.json()) == (status, body)
        assert world.fingerprint() == before
        assert not [row for row in audit_since(world, seq) if row["action"].startswith("tool.")]
        assert messages_posted(world) == 0
        # The same request from an allowed origin posts: the refusal above was the header's doing.
        ok = await client.post("/mcp", json=call, headers={**headers, "Origin": "http://localhost:8765"})
    assert ok.status_code == 200, ok.text
    assert messages_posted(world) == 1


@pytest.mark.invariant(66)
@pytest.mark.parametrize("authorised", [True, False], ids=["with-token", "without-token"])
async def test_an_http_body_over_four_mib_gets_413(world: World, authorised: bool) -> None:
    big = json.dumps(tool_call("post_message", {"room": "lobby", "text": "x" * (4 * 1024 * 1024)})).encode()
    headers = {**JSON_HEADERS, **bearer(world.tokens[ALICE])} if authorised else JSON_HEADERS
    before = world.fingerprint()
    async with raw_http(world) as client:
        r = await client.post("/mcp", content=big, headers=headers)
    assert r.status_code == 413
    assert r.json() == {"error": "TOO_LARGE"}
    assert world.fingerprint() == before


async def test_a_malformed_content_length_is_refused_before_anything_runs(world: World) -> None:
    raw = [(b"host", b"127.0.0.1:8765"), (b"content-type", b"application/json"), (b"content-length", b"12abc")]
    scope = {"type": "http", "method": "POST", "path": "/mcp", "raw_path": b"/mcp", "query_string": b"", "headers": raw}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    before = world.fingerprint()
    async with open_http_app(world.settings) as app:
        await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert world.fingerprint() == before


@pytest.mark.invariant(66)
async def test_a_chunked_http_body_over_four_mib_gets_413_without_a_content_length(world: World) -> None:
    chunk = b"x" * (1024 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield chunk

    async with raw_http(world) as client:
        _, headers = await sessioned_post(world, client)
        before = world.fingerprint()
        r = await client.post("/mcp", content=body(), headers=headers)
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert world.fingerprint() == before


async def test_real_sdk_clients_work_over_http_in_both_eras(world: World, mode: str) -> None:
    async with (
        http_transport(world) as t,
        httpx2.AsyncClient(transport=t, headers=bearer(world.tokens[ALICE])) as http,
        Client(streamable_http_client(f"{BASE}/mcp", http_client=http), mode=mode) as c,
    ):
        me = await c.call_tool("whoami", {})
        posted = await c.call_tool("post_message", {"room": "lobby", "text": "over http"})
        page = await c.call_tool("read_messages", {"room": "lobby"})
    assert me.structured_content["agent"]["handle"] == ALICE
    assert not posted.is_error, posted.content
    assert [m["text"] for m in page.structured_content["messages"]] == ["over http"]


@pytest.mark.invariant(8)
async def test_a_token_revoked_mid_http_session_gets_401_on_the_next_request(world: World) -> None:
    async with raw_http(world) as client:
        _, headers = await sessioned_post(world, client)
        ok = await client.post("/mcp", json=tool_call("whoami", {}), headers=headers)
        async with world.hub() as hub:
            await hub.accounts.revoke_token(OPERATOR, world.token_ids[ALICE])
        seq = last_audit_seq(world)
        refused = await client.post("/mcp", json=tool_call("whoami", {}), headers=headers)
    assert ok.status_code == 200 and not ok.json()["result"]["isError"]
    assert_401(refused)
    assert_one_denial(world, seq, "token_revoked", transport="http")


@pytest.mark.invariant(76)
async def test_a_legacy_session_id_presented_with_another_agents_token_is_refused(world: World) -> None:
    bob = "bob-claude"
    call = tool_call("post_message", {"room": "shared", "text": "in alice's session"})
    async with raw_http(world) as client:
        session = await open_legacy_session(client, world.tokens[ALICE])
        before, seq = world.fingerprint(), last_audit_seq(world)
        stolen = await client.post("/mcp", json=call, headers=in_session(world.tokens[bob], session))
        assert (stolen.status_code, stolen.json()) == (404, {"error": "NOT_FOUND"})
        assert world.fingerprint() == before
        [row] = audit_since(world, seq)
        own = await client.post("/mcp", json=call, headers=in_session(world.tokens[ALICE], session))
    assert (row["action"], row["outcome"], row["reason"]) == ("auth.authenticate", "denied", "session_of_another_agent")
    assert (row["actor_id"], row["cred_id"]) == (agent_row(world, bob)["agent_id"], world.token_ids[bob])
    assert own.status_code == 200 and not own.json()["result"]["isError"], own.text
    [author] = world.sql("SELECT a.handle FROM messages m JOIN agents a ON a.agent_id = m.agent_id")
    assert author[0] == ALICE


@pytest.mark.invariant(76)
async def test_a_session_id_the_hub_never_issued_is_refused(world: World) -> None:
    call = tool_call("whoami", {})
    async with raw_http(world) as client:
        real = await open_legacy_session(client, world.tokens[ALICE])
        seq = last_audit_seq(world)
        made_up = await client.post("/mcp", json=call, headers=in_session(world.tokens[ALICE], "0" * 32))
        # The SDK's own id for a live session is not accepted either: only the ids we hand out are.
        guessed = await client.post("/mcp", json=call, headers=in_session(world.tokens[ALICE], real.upper()))
    assert made_up.status_code == guessed.status_code == 404
    assert [r["reason"] for r in audit_since(world, seq)] == ["unknown_session", "unknown_session"]


@pytest.mark.invariant(76)
async def test_legacy_session_ids_are_long_random_strings(world: World) -> None:
    async with raw_http(world) as client:
        ids = [await open_legacy_session(client, world.tokens[ALICE]) for _ in range(4)]
    assert all(re.fullmatch(r"[0-9a-f]{32,}", s) for s in ids), ids
    assert len(set(ids)) == len(ids)


@pytest.mark.invariant(76)
async def test_legacy_session_ids_carry_128_random_bits(world: World) -> None:
    async with raw_http(world) as client:
        ids = [await open_legacy_session(client, world.tokens[ALICE]) for _ in range(24)]
    # With 128 random bits no hex digit keeps one value across 24 ids (chance per digit: 16**-23).
    constant = [i for i in range(32) if len({s[i] for s in ids}) == 1]
    assert constant == [], f"hex digits {constant} are the same in every session id"


# --------------------------------------------------------------------------------------------------------------
# Secrets at rest and in logs; the database's own hygiene
# --------------------------------------------------------------------------------------------------------------


def database_bytes(world: World) -> bytes:
    parts = [world.db, world.db.with_name(world.db.name + "-wal")]
    return b"".join(p.read_bytes() for p in parts if p.exists())


def spellings(secret: str) -> list[bytes]:
    """A bearer secret as text, its base64url body, and the raw bytes that body encodes."""
    body = secret.split("_", 1)[1]
    return [secret.encode(), body.encode(), b64url_decode(body)]


@pytest.mark.invariant(18)
async def test_no_plaintext_secret_reaches_the_database_or_the_server_log(world: World, tmp_path: Path) -> None:
    sentinel = f"SENTINEL-{secrets.token_hex(8)}"
    async with world.hub() as hub:
        fresh = await hub.accounts.issue_token(OPERATOR, ALICE, timedelta(days=1))
        revoked = await hub.accounts.issue_token(OPERATOR, "alice-codex", timedelta(days=1))
        await hub.accounts.revoke_token(OPERATOR, revoked.token_id)
        accepted = await hub.invites.create_as_owner(OPERATOR, "bobs-den", "bob", 3600)
        await hub.invites.accept(OPERATOR, accepted.code, "carol", ["carol-claude"])
    stranger = "art_" + secrets.token_urlsafe(32)
    results: list[CallToolResult] = []
    async with world.client("alice-admin") as admin:
        made = await admin.call_tool("create_invite", {"room": "lobby"})
    async with world.hub() as hub:
        pending = (await hub.invites.confirm(OPERATOR, made.structured_content["invite_id"], "alice")).code
    for credential in (stranger, revoked.token, "art_x"):
        async with world.client(None, token=credential) as c:
            results.append(await c.call_tool("post_message", {"room": "lobby", "text": sentinel}))

    log = tmp_path / "stderr.log"
    with log.open("w") as errlog, anyio.fail_after(60):
        async with stdio_session(world, token_file(world, fresh.token), errlog) as c:
            results.append(await c.call_tool("post_message", {"room": "lobby", "text": f"{sentinel} posted"}))
            results.append(await c.call_tool("read_messages", {"room": "lobby"}))
            results.append(await c.call_tool("post_message", {"room": "nowhere", "text": f"{sentinel} lost"}))
            results.append(await c.call_tool("post_message", {"room": "lobby", "text": sentinel, "reply_to": 0}))
            results.append(await c.call_tool("create_invite", {"room": "lobby"}))
    stderr = log.read_text()
    assert "tool.call" in stderr, stderr  # the log was captured: scanning it below is not vacuous
    for r in results[:3]:
        assert_denied(r)
    assert [r.is_error for r in results[3:]] == [False, False, True, True, True]

    key = load_issuer_key(world.settings.issuer_key_path)
    secret_tokens = [*world.tokens.values(), fresh.token, revoked.token, stranger]
    secret_codes = [accepted.code, pending]
    forbidden = [s for secret in secret_tokens + secret_codes for s in spellings(secret)]
    forbidden += [bytes(key), world.settings.issuer_key_path.read_bytes().strip()]
    db = database_bytes(world)
    tool_output = "".join(c.text for r in results for c in r.content).encode()  # type: ignore[union-attr]
    for where, data in (("database", db), ("stdio stderr", stderr.encode()), ("tool results", tool_output)):
        leaked = [s[:12] for s in forbidden if s in data]
        assert leaked == [], f"{where} holds secrets starting {leaked}"
    for secret in [*world.tokens.values(), fresh.token, revoked.token, *secret_codes]:
        assert hashlib.sha256(secret.encode()).digest() in db
    assert sentinel not in stderr


@pytest.mark.invariant(53)
async def test_every_store_connection_has_secure_delete_on(world: World) -> None:
    async with world.hub() as hub:
        writer = await hub.store.write(lambda c: c.execute("PRAGMA secure_delete").fetchone()[0])
        reader = await hub.store.read(lambda c: c.execute("PRAGMA secure_delete").fetchone()[0])
    assert (writer, reader) == (1, 1)


async def test_a_credential_row_is_read_by_the_columns_the_lookup_selects(world: World) -> None:
    """`judge` reads `_LOOKUP`'s row by position, through `_Found`: the two must name the same columns in the
    same order, or a check would read the wrong column and pass (a revoked token read as an expiry, say)."""
    from agent_rooms_mcp.auth.authenticator import _LOOKUP, _Found

    with sqlite3.connect(world.db) as conn:
        described = [d[0] for d in conn.execute(_LOOKUP, (b"",)).description]
    assert described == list(_Found._fields)
