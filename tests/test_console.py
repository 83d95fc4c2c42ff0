"""The owner console (DESIGN §9.2) against the hub's real HTTP app, in-process over ASGI: login links and
sessions, the safety headers, cross-origin protection, and each page's action through the same owner
action as the CLI. `test_console_browser.py` drives the same pages in a real Chromium."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
from click.testing import CliRunner
from jinja2 import DictLoader, Environment

from agent_rooms_mcp import policy
from agent_rooms_mcp.auth.tokens import secret_hash
from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.http import open_http_app
from agent_rooms_mcp.owner_actions import perform
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.public import exposure_for
from agent_rooms_mcp.settings import Settings
from agent_rooms_mcp.store.credentials import revoke_all
from agent_rooms_mcp.web.console.app import CSP, environment
from tests.conftest import HTTP_BASE, OPERATOR, World
from tests.invariants import INVARIANTS  # noqa: F401 (the rows these tests cite live there)
from tests.test_consent import Calls, new_task

SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Origin": HTTP_BASE}

# Sec-Fetch-Site, Origin, Host -> allowed, for an unsafe method (Go 1.25 CrossOriginProtection's algorithm).
CROSS_ORIGIN_TABLE = [
    ("same-origin", None, "127.0.0.1:8765", True),
    ("none", None, "127.0.0.1:8765", True),
    ("same-origin", "https://evil.example", "127.0.0.1:8765", True),  # the browser's own header decides
    ("cross-site", None, "127.0.0.1:8765", False),
    ("same-site", None, "127.0.0.1:8765", False),  # another port of localhost is same-site, not same-origin
    ("cross-site", "http://127.0.0.1:8765", "127.0.0.1:8765", False),
    ("CROSS-SITE", None, "127.0.0.1:8765", False),
    ("bogus", None, "127.0.0.1:8765", False),
    (None, "http://127.0.0.1:8765", "127.0.0.1:8765", True),
    (None, "http://127.0.0.1:9999", "127.0.0.1:8765", False),
    (None, "https://evil.example", "127.0.0.1:8765", False),
    (None, "null", "127.0.0.1:8765", False),
    (None, "http://127.0.0.1:8765", None, False),
    (None, None, "127.0.0.1:8765", True),  # not a browser: CSRF cannot apply, the session cookie still counts
]


@pytest.mark.invariant(96)
@pytest.mark.parametrize("site, origin, host, allowed", CROSS_ORIGIN_TABLE)
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_every_unsafe_request_passes_the_cross_origin_check(
    method: str, site: str | None, origin: str | None, host: str | None, allowed: bool
) -> None:
    assert policy.cross_origin_allowed(method, site, origin, host) is allowed


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "get"])
def test_safe_methods_pass_whatever_their_headers(method: str) -> None:
    assert policy.cross_origin_allowed(method, "cross-site", "https://evil.example", "127.0.0.1:8765")


@pytest.mark.invariant(96)
def test_every_template_escapes_what_it_is_given() -> None:
    """STYLE P18: autoescape is on because we said so; a `<script>` through every template comes out inert."""
    env = environment()
    assert env.autoescape is True
    probe = Environment(loader=DictLoader({"t": "{{ x }}"}), autoescape=env.autoescape)
    assert probe.get_template("t").render(x="<script>") == "&lt;script&gt;"
    for name in env.list_templates():
        source = env.loader.get_source(env, name)[0]  # type: ignore[union-attr]
        assert "|safe" not in source.replace(" ", "") and "autoescape false" not in source, name
        assert "<script>" not in source and " style=" not in source and " on" + "click" not in source, name


# The app, in-process.


@asynccontextmanager
async def served(settings: Settings, **kwargs: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with (
        open_http_app(settings, **kwargs) as app,
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=kwargs.pop("base", HTTP_BASE)) as http,
    ):
        yield http


async def link_for(world: World, owner: str, base: str = HTTP_BASE) -> str:
    async with world.hub() as hub:
        made = await perform(hub, Human(OPERATOR), "console.link", {"owner": owner, "base_url": base})
    return str(made.url)  # type: ignore[attr-defined]


def code_of(url: str) -> str:
    return url.split("code=", 1)[1].replace("%2E", ".")


async def log_in(http: httpx2.AsyncClient, world: World, owner: str) -> httpx2.Response:
    code = code_of(await link_for(world, owner))
    answer = await http.post("/console/login", data={"code": code}, headers=SAME_ORIGIN)
    assert answer.status_code == 303, answer.text
    return answer


@pytest.fixture
async def http(world: World) -> AsyncIterator[httpx2.AsyncClient]:
    async with served(world.settings) as client:
        yield client


@pytest.mark.invariant(40, 91)
async def test_a_login_link_has_128_bits_is_hashed_at_rest_and_only_its_post_consumes_it(
    world: World, http: httpx2.AsyncClient
) -> None:
    url = await link_for(world, "bob")
    assert url.startswith(HTTP_BASE + "/console/login?code=cln_")
    code = code_of(url)
    link_id, secret = code.split(".")
    assert len(secret) >= 32  # 192 bits of base64url; the id adds 128 more
    (row,) = world.sql("SELECT * FROM console_links WHERE link_id = ?", (link_id,))
    assert bytes(row["secret_hash"]) == secret_hash(secret)
    assert secret.encode() not in world.db.read_bytes()
    # A scanner's GET shows a button and consumes nothing; the page names whom the link logs in, so a link an
    # owner minted for themselves and sent on does not log its clicker in as them unawares.
    for _ in range(3):
        page = await http.get(f"/console/login?code={code}")
        assert page.status_code == 200 and 'name="code"' in page.text and "Log in as bob" in page.text
    forged = await http.get(f"/console/login?code={link_id}.{'x' * len(secret)}")
    assert 'name="code"' not in forged.text and "bob" not in forged.text
    assert world.sql("SELECT used_at FROM console_links")[0]["used_at"] is None
    answer = await http.post("/console/login", data={"code": code}, headers=SAME_ORIGIN)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/"
    # Single use: the same link again logs nobody in.
    again = await http.post("/console/login", data={"code": code}, headers=SAME_ORIGIN)
    assert again.status_code == 401 and "set-cookie" not in again.headers
    assert world.sql("SELECT reason FROM audit ORDER BY seq DESC LIMIT 1")[0]["reason"] == "used_console_link"


@pytest.mark.invariant(40, 91)
async def test_a_login_link_is_void_after_5_failures_and_dead_once_expired(
    world: World, http: httpx2.AsyncClient
) -> None:
    link_id, secret = code_of(await link_for(world, "bob")).split(".")
    for _ in range(5):
        wrong = await http.post("/console/login", data={"code": f"{link_id}.{'x' * 32}"}, headers=SAME_ORIGIN)
        assert wrong.status_code == 401
    right = await http.post("/console/login", data={"code": f"{link_id}.{secret}"}, headers=SAME_ORIGIN)
    assert right.status_code == 401 and "set-cookie" not in right.headers
    assert world.sql("SELECT count(*) AS n FROM console_sessions")[0]["n"] == 0

    link_id, secret = code_of(await link_for(world, "bob")).split(".")
    with sqlite3.connect(world.db) as conn:  # five minutes from now, already past
        conn.execute("UPDATE console_links SET expires_at = '2000-01-01T00:00:00Z' WHERE link_id = ?", (link_id,))
    late = await http.post("/console/login", data={"code": f"{link_id}.{secret}"}, headers=SAME_ORIGIN)
    assert late.status_code == 401 and "set-cookie" not in late.headers


@pytest.mark.invariant(96)
async def test_the_session_cookie_is_httponly_and_samesite_strict_on_loopback(
    world: World, http: httpx2.AsyncClient
) -> None:
    cookie = (await log_in(http, world, "bob")).headers["set-cookie"]
    assert cookie.startswith("agent-rooms-console=")
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    max_age = next(int(a.split("=")[1]) for a in attributes if a.startswith("max-age="))
    assert max_age == world.settings.limits.console_loopback_absolute_s == 2 * 3600
    assert world.settings.limits.console_loopback_idle_s == 15 * 60


@pytest.mark.invariant(96)
async def test_under_https_the_cookie_is_host_prefixed_and_secure(world: World) -> None:
    exposure = exposure_for("127.0.0.1", "https://hub.example.org", None, (None, None))
    async with (
        open_http_app(world.settings, exposure=exposure) as app,
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="https://hub.example.org") as http,
    ):
        code = code_of(await link_for(world, "bob", "https://hub.example.org"))
        answer = await http.post("/console/login", data={"code": code}, headers={"Sec-Fetch-Site": "same-origin"})
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("__Host-agent-rooms-console=")
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "secure", "path=/"} <= attributes
        assert not any(a.startswith("domain") for a in attributes)
        assert (await http.get("/console/")).status_code == 200
        # A foreign Host is refused before the console runs, as at /mcp.
        foreign = await http.get("/console/", headers={"Host": "evil.example"})
        assert foreign.status_code == 421


PAGES = ["", "consents", "runs", "agents", "rooms", "room?name=shared", "grants", "devices", "audit"]


@pytest.mark.invariant(96)
async def test_every_page_carries_the_csp_and_safety_headers(world: World, http: httpx2.AsyncClient) -> None:
    rows = len(world.audit_rows())
    anonymous = await http.get("/console/")
    assert anonymous.status_code == 401 and "agent-rooms console" in anonymous.text
    assert len(world.audit_rows()) == rows  # not logged in yet is no failed attempt
    forged = await http.get("/console/", headers={"Cookie": "agent-rooms-console=" + "x" * 43})
    assert forged.status_code == 401 and world.audit_rows()[-1]["reason"] == "unknown_console_session"
    http.cookies.clear()
    await log_in(http, world, "bob")
    for page in [*PAGES, "static/console.css", "static/console.js", "nowhere", "login"]:
        answer = await http.get("/console/" + page)
        assert answer.status_code in (200, 404), (page, answer.status_code, answer.text[:300])
        assert answer.headers["content-security-policy"] == CSP
        assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP and "unsafe-inline" not in CSP
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["cache-control"] == "no-store"
        if answer.headers["content-type"].startswith("text/html"):
            assert "<script>" not in answer.text and " style=" not in answer.text


@pytest.mark.invariant(96)
@pytest.mark.parametrize(
    "headers", [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "http://127.0.0.1:1"}]
)
async def test_a_cross_origin_post_is_refused_and_changes_nothing(
    world: World, http: httpx2.AsyncClient, headers: dict[str, str]
) -> None:
    await log_in(http, world, "alice")
    before = world.fingerprint()
    token_id = world.token_ids["alice-claude"]
    refused = await http.post("/console/tokens/revoke", data={"token_id": token_id}, headers=headers)
    assert refused.status_code == 403 and "CROSS_ORIGIN" in refused.text
    assert world.fingerprint() == before
    # The same form from the console's own page does revoke it.
    done = await http.post("/console/tokens/revoke", data={"token_id": token_id}, headers=SAME_ORIGIN)
    assert done.status_code == 303


@pytest.mark.parametrize("page", ["/console/agents", "/console/consents", "/console/runs", "/console/grants",
                                  "/console/devices"])  # fmt: skip
async def test_a_pages_done_line_shows_only_known_messages_never_the_links_text(
    world: World, http: httpx2.AsyncClient, page: str
) -> None:
    """`?done=` names a key of a fixed set: a link someone crafted cannot make the console say anything."""
    await log_in(http, world, "alice")
    crafted = "token revoked. Your session expired: log in again at https://evil.example"
    for done in (crafted, "token.revoke</p><p>x", "__class__", ""):
        shown = await http.get(page, params={"done": done})
        assert shown.status_code == 200 and 'id="done"' not in shown.text, done
        assert "evil.example" not in shown.text
    known = await http.get(page, params={"done": "token.revoke"})
    assert '<p class="done" id="done">Done: the token is revoked.</p>' in known.text


async def test_an_action_comes_back_with_a_done_key_and_its_message(world: World, http: httpx2.AsyncClient) -> None:
    await log_in(http, world, "alice")
    done = await http.post(
        "/console/tokens/revoke", data={"token_id": world.token_ids["alice-claude"]}, headers=SAME_ORIGIN
    )
    assert done.status_code == 303 and done.headers["location"] == "/console/agents?done=token.revoke"
    assert "Done: the token is revoked." in (await http.get(done.headers["location"])).text


async def test_decisions_carry_the_hash_shown_and_write_the_clis_audit_row_via_console(
    world: World, http: httpx2.AsyncClient
) -> None:
    async with AsyncExitStack() as stack:
        mcp = Calls(world, stack)
        await world.trust("bob", "alice")
        first = await new_task(mcp, "bob-claude", title="first")
        second = await new_task(mcp, "bob-claude", title="second")
    await log_in(http, world, "bob")
    page = await http.get("/console/consents")
    shown = dict(re.findall(r'name="proposal_id" value="([^"]+)">\s*<input type="hidden" name="payload_sha256" '
                            r'value="([0-9a-f]{64})"', page.text))  # fmt: skip
    assert set(shown) == {first["proposal_id"], second["proposal_id"]}
    assert "untrusted" not in page.text.lower()  # the models' envelope markup stays out of the page

    before = world.fingerprint()
    stale = {"proposal_id": first["proposal_id"], "payload_sha256": "0" * 64, "decision": "accept"}
    conflict = await http.post("/console/consents/decide", data=stale, headers=SAME_ORIGIN)
    assert conflict.status_code == 409 and "CONFLICT" in conflict.text
    assert world.fingerprint() == before
    denial = world.sql("SELECT * FROM audit ORDER BY seq DESC LIMIT 1")[0]
    assert (denial["outcome"], denial["via"], denial["action"]) == ("denied", "console", "cli.consent.accept")

    accept = {"proposal_id": first["proposal_id"], "payload_sha256": shown[first["proposal_id"]], "decision": "accept"}
    assert (await http.post("/console/consents/decide", data=accept, headers=SAME_ORIGIN)).status_code == 303
    reject = {"proposal_id": second["proposal_id"], "payload_sha256": shown[second["proposal_id"]],
              "decision": "reject", "reason": "not this week"}  # fmt: skip
    assert (await http.post("/console/consents/decide", data=reject, headers=SAME_ORIGIN)).status_code == 303
    states = {
        r["proposal_id"]: (r["state"], r["decided_via"], r["reason"]) for r in world.sql("SELECT * FROM proposals")
    }
    assert states[first["proposal_id"]] == ("accepted", "console", None)
    assert states[second["proposal_id"]] == ("rejected", "console", "not this week")
    assert world.chain_verifies()


async def test_another_owners_room_looks_missing_and_logout_ends_the_session(
    world: World, http: httpx2.AsyncClient
) -> None:
    await log_in(http, world, "carol")
    assert (await http.get("/console/room?name=lobby")).status_code == 404
    assert (await http.get("/console/")).status_code == 200
    out = await http.post("/console/logout", headers=SAME_ORIGIN)
    assert out.status_code == 200 and "logged out" in out.text
    # The cookie the browser dropped no longer works either, should anyone have kept it.
    (row,) = world.sql("SELECT revoked_at FROM console_sessions")
    assert row["revoked_at"] is not None
    assert (await http.get("/console/")).status_code == 401


XSS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(2)">',
    '<a href="javascript:alert(3)">click</a>',
    "<svg onload=alert(4)><circle r=9/></svg>",
    "<style>body{display:none}</style>",
    "\u202egnp.exe",
    "{{ 7*7 }}",
]


@pytest.mark.invariant(96)
async def test_another_owners_content_is_escaped_and_marked_on_every_page(
    world: World, http: httpx2.AsyncClient
) -> None:
    async with AsyncExitStack() as stack:
        mcp = Calls(world, stack)
        for payload in XSS:
            await mcp.ok("alice-claude", "post_message", {"room": "shared", "text": payload})
    await log_in(http, world, "bob")
    page = (await http.get("/console/room?name=shared")).text
    for raw in ("<script>alert", "<img src", "<svg", "<style>", 'href="javascript:', "\u202e"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "[U+202E]" in page and "{{ 7*7 }}" in page
    assert page.count('class="foreign"') >= len(XSS)


async def test_a_device_mints_a_link_for_its_own_owner_only_and_its_revoke_ends_the_session(
    world: World, http: httpx2.AsyncClient
) -> None:
    async with world.hub() as hub:
        enrollment = await hub.devices.enroll(OPERATOR, "bob", HTTP_BASE)
        device = await hub.devices.redeem(enrollment.code, "laptop")
        who = await hub.devices.authenticate(device.credential)
        with pytest.raises(RoomsError) as other:
            await perform(hub, who, "console.link", {"owner": "alice", "base_url": HTTP_BASE})
        assert other.value.code is ErrorCode.FORBIDDEN_SCOPE
        with pytest.raises(RoomsError) as bad_url:
            await perform(hub, who, "console.link", {"owner": "bob", "base_url": "javascript:alert(1)"})
        assert bad_url.value.code is ErrorCode.INVALID_ARGUMENT
        link = await perform(hub, who, "console.link", {"owner": "bob", "base_url": HTTP_BASE})
    minted = world.sql("SELECT * FROM audit WHERE action = 'console.link'")[-1]
    assert (minted["via"], minted["cred_id"]) == ("device", device.device_id)
    answer = await http.post("/console/login", data={"code": code_of(link.url)}, headers=SAME_ORIGIN)  # type: ignore[attr-defined]
    assert answer.status_code == 303
    assert (await http.get("/console/devices")).status_code == 200
    # At the console the owner may revoke any device of theirs, this one too; the session it opened ends.
    done = await http.post("/console/devices/revoke", data={"device_id": device.device_id}, headers=SAME_ORIGIN)
    assert done.status_code == 303
    assert (await http.get("/console/")).status_code == 401


async def test_the_operator_minting_for_an_owner_who_is_not_local_acts_on_their_behalf(world: World) -> None:
    async with world.hub() as hub:
        await hub.accounts.add_owner(OPERATOR, "dave", local=False)
        await perform(hub, Human(OPERATOR), "console.link", {"owner": "dave", "base_url": HTTP_BASE})
        await perform(hub, Human(OPERATOR), "console.link", {"owner": "bob", "base_url": HTTP_BASE})
    dave, bob = world.sql("SELECT detail FROM audit WHERE action = 'console.link' ORDER BY seq")
    assert '"on_behalf_of":"own_' in dave["detail"] and "on_behalf_of" not in bob["detail"]


async def test_a_same_origin_form_under_no_referrer_passes_though_its_origin_is_null(
    world: World, http: httpx2.AsyncClient
) -> None:
    await log_in(http, world, "alice")
    token_id = world.token_ids["alice-claude"]
    foreign = await http.post(
        "/console/tokens/revoke",
        data={"token_id": token_id},
        headers={"Origin": "null", "Sec-Fetch-Site": "cross-site"},
    )
    assert foreign.status_code == 403
    own = await http.post(
        "/console/tokens/revoke",
        data={"token_id": token_id},
        headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"},
    )
    assert own.status_code == 303


async def test_the_console_command_prints_a_link_and_refuses_without_an_owner(world: World) -> None:
    env = {"AGENT_ROOMS_HOME": str(world.settings.home)}

    def invoke(*args: str) -> Any:  # the CLI runs its own event loop: in a thread of its own
        return anyio.to_thread.run_sync(lambda: CliRunner().invoke(cli, list(args), env=env))

    done = await invoke("console", "--owner", "alice", "--json")
    assert done.exit_code == 0, done.output
    made = json.loads(done.stdout)
    assert made["owner"] == "alice" and made["url"].startswith("http://127.0.0.1:8765/console/login?code=cln_")
    (row,) = world.sql("SELECT * FROM audit WHERE action = 'console.link'")
    assert (row["actor_kind"], row["via"]) == ("operator", "cli")
    missing = await invoke("console")
    assert missing.exit_code == 1 and "--owner HANDLE" in missing.output
    bad = await invoke("console", "--owner", "alice", "--url", "file:///etc")
    assert bad.exit_code == 1 and "INVALID_ARGUMENT: base_url" in bad.output


async def test_giving_invoke_needs_the_handle_typed_and_a_refusal_changes_nothing(
    world: World, http: httpx2.AsyncClient
) -> None:
    await log_in(http, world, "alice")
    before = world.fingerprint()
    untyped = {"handle": "alice-claude", "scopes": "read,post,task,invoke", "confirm": "yes"}
    refused = await http.post("/console/agents/scopes", data=untyped, headers=SAME_ORIGIN)
    assert refused.status_code == 400 and "confirm" in refused.text
    assert world.fingerprint() == before
    typed = {**untyped, "confirm": "alice-claude"}
    assert (await http.post("/console/agents/scopes", data=typed, headers=SAME_ORIGIN)).status_code == 303
    (agent,) = world.sql("SELECT scopes FROM agents WHERE handle = 'alice-claude'")
    assert "invoke" in agent["scopes"]
    # Narrowing needs no confirmation; another owner's agent looks missing.
    narrow = {"handle": "alice-claude", "scopes": "read"}
    assert (await http.post("/console/agents/scopes", data=narrow, headers=SAME_ORIGIN)).status_code == 303
    theirs = {"handle": "bob-claude", "scopes": "read"}
    assert (await http.post("/console/agents/scopes", data=theirs, headers=SAME_ORIGIN)).status_code == 404


async def test_an_idle_session_expires_and_a_restore_can_end_every_session(
    world: World, http: httpx2.AsyncClient
) -> None:
    await log_in(http, world, "alice")
    assert (await http.get("/console")).headers["location"] == "/console/"
    assert (await http.get("/console/")).status_code == 200
    with sqlite3.connect(world.db) as conn:  # last seen 16 minutes ago: past the 15 minutes of idle
        conn.execute("UPDATE console_sessions SET last_seen_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-16 minutes')")
    assert (await http.get("/console/")).status_code == 401
    await log_in(http, world, "alice")
    assert (await http.get("/console/")).status_code == 200
    with sqlite3.connect(world.db) as conn:
        assert revoke_all(conn, "2030-01-01T00:00:00Z")["console_sessions"] == 2  # the idle one is revoked too
    assert (await http.get("/console/")).status_code == 401
