"""The OAuth approval page, /console/authorize (DESIGN §9.4, §9.2), in process over ASGI against the hub in
public mode: a scripted client registers and asks at /authorize; the owner logs in by a console link, sees
the request and approves or denies it there. `test_console_browser.py` drives the same page in Chromium.

Every refusal is checked to issue nothing: the database's fingerprint is unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

import httpx2
import pytest

from tests.conftest import World
from tests.invariants import INVARIANTS  # noqa: F401 (the rows these tests cite live there)
from tests.test_console import code_of, link_for
from tests.test_oauth import CLAUDE, ISSUER, LOOPBACK, Flow, back, flow, whoami
from tests.test_oauth_cimd import LOCAL_ISSUER, doc_server, local_flow, trusting

SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Origin": ISSUER}
ALL_SCOPES = {"scope_read": "on", "scope_post": "on", "scope_task": "on"}


def agent_id(world: World, handle: str) -> str:
    return str(world.sql("SELECT agent_id FROM agents WHERE handle = ?", (handle,))[0]["agent_id"])


async def log_in(f: Flow, owner: str = "alice") -> httpx2.Response:
    code = code_of(await link_for(f.world, owner, f.issuer))
    headers = {"Sec-Fetch-Site": "same-origin", "Origin": f.issuer}
    return await f.http.post("/console/login", data={"code": code}, headers=headers)


@asynccontextmanager
async def asking(world: World, redirect_uri: str = CLAUDE) -> AsyncIterator[tuple[Flow, str]]:
    """A registered client whose authorization request waits at the console: (flow, request id)."""
    async with flow(world, redirect_uri) as f:
        assert (await f.register()).status_code == 201
        yield f, await f.request_id()


async def decide(f: Flow, request_id: str, decision: str, **fields: str) -> httpx2.Response:
    return await f.http.post(
        "/console/authorize", data={"request": request_id, "decision": decision, **fields}, headers=SAME_ORIGIN
    )


@pytest.mark.invariant(97)
async def test_not_logged_in_the_page_says_how_and_the_login_comes_back_to_the_request(world: World) -> None:
    async with asking(world) as (f, request_id):
        page = await f.http.get(f"/console/authorize?request={request_id}")
        assert page.status_code == 401 and 'id="authorize-login"' in page.text
        assert "agent-rooms console --owner" in page.text and "Approve" not in page.text
        assert page.headers["content-security-policy"].count("form-action 'self';") == 1
        login = await log_in(f)
        assert login.status_code == 303
        assert login.headers["location"] == "/console/authorize?" + urlencode({"request": request_id})
        shown = await f.http.get(login.headers["location"])
        assert shown.status_code == 200 and 'id="approve"' in shown.text
        # The way back is used once: the next login lands on the console's home.
        assert (await log_in(f)).headers["location"] == "/console/"


@pytest.mark.invariant(97, 105)
async def test_the_owner_approves_as_their_agent_and_the_client_acts_as_it(world: World) -> None:
    async with asking(world) as (f, request_id):
        await log_in(f)
        page = await f.http.get(f"/console/authorize?request={request_id}")
        assert page.status_code == 200
        assert 'id="unverified"' in page.text and "Claude" in page.text  # a registered client's own name
        assert "https://claude.ai:443" in page.text and "loopback-warning" not in page.text
        assert "bob-claude" not in page.text and 'value="alice-claude"' in page.text
        csp = page.headers["content-security-policy"]
        assert "form-action 'self' https://claude.ai;" in csp and "img-src 'self'" in csp
        answer = await decide(f, request_id, "approve", agent="alice-claude", **ALL_SCOPES)
        assert answer.status_code == 303
        params = back(answer.headers["location"], CLAUDE)
        assert params["iss"] == ISSUER and params["state"] == "st-1"
        tokens = await f.exchange(params["code"])
        assert tokens.status_code == 200, tokens.text
        assert (await whoami(f.http, tokens.json()["access_token"]))["agent"]["handle"] == "alice-claude"
        [row] = [r for r in world.audit_rows() if r["action"] == "oauth.approve"]
        assert (row["actor_kind"], row["via"], row["target"]) == ("owner", "console", agent_id(world, "alice-claude"))
        # Decided once: the page and a second decision both say so, and issue nothing.
        before = world.fingerprint()
        again = await decide(f, request_id, "approve", agent="alice-claude", **ALL_SCOPES)
        assert again.status_code == 404 and "already decided" in again.text
        assert world.fingerprint() == before


@pytest.mark.invariant(97)
async def test_a_loopback_redirect_is_shown_with_its_port_and_a_warning(world: World) -> None:
    async with asking(world, LOOPBACK) as (f, request_id):
        await log_in(f)
        page = await f.http.get(f"/console/authorize?request={request_id}")
        assert 'id="loopback-warning"' in page.text and "http://localhost:53682" in page.text
        assert "<img" not in page.text  # a client's logo_uri is never loaded


@pytest.mark.invariant(97, 105)
async def test_a_denial_redirects_with_access_denied_and_issues_nothing(world: World) -> None:
    async with asking(world) as (f, request_id):
        await log_in(f)
        grants = len(world.sql("SELECT * FROM oauth_grants"))
        answer = await decide(f, request_id, "deny")
        assert answer.status_code == 303
        assert back(answer.headers["location"], CLAUDE) == {"error": "access_denied", "state": "st-1", "iss": ISSUER}
        assert len(world.sql("SELECT * FROM oauth_grants")) == grants
        assert [r["action"] for r in world.audit_rows()][-1] == "oauth.deny"


@pytest.mark.invariant(32)
@pytest.mark.parametrize(
    "agent, scopes, status, says",
    [
        ("bob-claude", {"scope_read": "on"}, 404, "no such agent"),  # another owner's agent looks missing
        ("alice-admin", {"scope_read": "on", "scope_manage": "on"}, 303, ""),  # manage is not even offered
        ("alice-mute", {"scope_read": "on"}, 400, "does not hold read"),  # beyond the agent's scopes
        ("alice-claude", {}, 400, "choose at least one"),
    ],
)
async def test_a_foreign_agent_or_a_scope_beyond_the_agents_is_refused_and_issues_nothing(
    world: World, agent: str, scopes: dict[str, str], status: int, says: str
) -> None:
    async with asking(world) as (f, request_id):
        await log_in(f)
        before = world.fingerprint()
        answer = await decide(f, request_id, "approve", agent=agent, **scopes)
        assert answer.status_code == status, answer.text
        if status == 303:  # only the scopes the page offers exist: manage never reaches the grant
            [grant] = world.sql("SELECT scopes FROM oauth_grants")
            assert grant["scopes"] == "read"
            return
        assert says in answer.text
        assert world.fingerprint() == before
        # The request is still there to decide properly.
        assert (await f.http.get(f"/console/authorize?request={request_id}")).status_code == 200


@pytest.mark.invariant(96)
async def test_a_cross_origin_approval_is_refused_and_issues_nothing(world: World) -> None:
    async with asking(world) as (f, request_id):
        await log_in(f)
        before = world.fingerprint()
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
            answer = await f.http.post(
                "/console/authorize",
                data={"request": request_id, "decision": "approve", "agent": "alice-claude", **ALL_SCOPES},
                headers=headers,
            )
            # Refused by the console's cross-origin check, or before it by the public Origin allow-list.
            assert answer.status_code == 403 and ("CROSS_ORIGIN" in answer.text or "FORBIDDEN_ORIGIN" in answer.text)
        assert world.fingerprint() == before


@pytest.mark.parametrize("request_id", ["oar_unknownunknownunknown", "", "../../x", "oar_<script>xxxxxxxxxxxxxxxx"])
async def test_an_unknown_request_gets_a_clear_page_and_nothing_is_issued(world: World, request_id: str) -> None:
    async with asking(world) as (f, _):
        await log_in(f)
        before = world.fingerprint()
        page = await f.http.get("/console/authorize?" + urlencode({"request": request_id}))
        assert page.status_code == 404 and "unknown, expired or already decided" in page.text
        answer = await decide(f, request_id, "approve", agent="alice-claude", **ALL_SCOPES)
        assert answer.status_code == 404 and "nothing was issued" in answer.text
        assert "<script>" not in page.text
        assert world.fingerprint() == before


@pytest.mark.invariant(97, 108)
async def test_a_metadata_document_client_is_shown_by_its_host_and_approved_through_the_page(
    world: World, tmp_path: Path
) -> None:
    """A client known by its metadata document (served over HTTPS by a local server the test trusts): the page
    names the host that publishes the document, not an unverified self-chosen name, and its name is only
    text; approving there gives the client a code it exchanges to act as the chosen agent."""
    async with doc_server(tmp_path) as (docs, ca), local_flow(trusting(world, ca)) as f:
        f.client_id = docs.document(client_name="Claude Code <script>alert(1)</script>")
        asked = await f.authorize()
        assert asked.status_code == 302, asked.text
        page_url = asked.headers["location"]
        assert page_url.startswith(LOCAL_ISSUER + "/console/authorize?request=oar_")
        request_id = page_url.split("request=", 1)[1]
        assert (await log_in(f)).headers["location"] == "/console/"
        page = await f.http.get(f"/console/authorize?request={request_id}")
        assert page.status_code == 200
        assert '<b id="client-host">localhost</b>' in page.text and 'id="unverified"' not in page.text
        assert "Claude Code &lt;script&gt;" in page.text and "<script>alert" not in page.text
        assert "https://claude.ai:443" in page.text and "loopback-warning" not in page.text
        same_origin = {"Sec-Fetch-Site": "same-origin", "Origin": LOCAL_ISSUER}
        form = {"request": request_id, "decision": "approve", "agent": "alice-claude", **ALL_SCOPES}
        answer = await f.http.post("/console/authorize", data=form, headers=same_origin)
        assert answer.status_code == 303, answer.text
        params = back(answer.headers["location"], CLAUDE)
        assert (params["iss"], params["state"]) == (LOCAL_ISSUER, "st-1")
        tokens = await f.exchange(params["code"])
        assert tokens.status_code == 200, tokens.text
        who = await whoami(f.http, tokens.json()["access_token"], LOCAL_ISSUER)
        assert who["agent"]["handle"] == "alice-claude"
        assert docs.hits == ["/client.json"]  # fetched once, at /authorize; the page and /token used the copy
    [row] = [r for r in world.audit_rows() if r["action"] == "oauth.approve"]
    assert (row["actor_kind"], row["via"]) == ("owner", "console") and docs.url() in row["detail"]
