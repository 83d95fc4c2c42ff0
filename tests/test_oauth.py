"""The Claude.ai connector's OAuth 2.1 (DESIGN §9.4, invariants 32, 97, 105): a scripted client over real HTTP
against the hub in public mode, in process. These tests approve through the service, as the console's
approval page does (`test_console_authorize.py` drives the page), with an owner principal.

Every refusal is checked to issue nothing: the database's fingerprint (audit rows aside) is unchanged, unless
the refusal is one that must revoke (a reused code or refresh token revokes its family)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, closing
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import anyio.to_thread
import httpx2
import pytest
from click.testing import CliRunner, Result
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agent_rooms_mcp import audit
from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.http import open_http_app
from agent_rooms_mcp.principals import Human, Scope, parse_scopes
from agent_rooms_mcp.public import Exposure
from agent_rooms_mcp.services.oauth_refusals import RefusalTrace
from agent_rooms_mcp.services.purge import Purge
from agent_rooms_mcp.store.credentials import revoke_all
from tests.conftest import OPERATOR, World

ISSUER = "https://hub.example"
RESOURCE = ISSUER + "/mcp"
PUBLIC = Exposure(public=("https", "hub.example"), public_origin=ISSUER)
CLAUDE = "https://claude.ai/api/mcp/auth_callback"
LOOPBACK = "http://localhost:53682/callback"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ALL = frozenset({Scope.READ, Scope.POST, Scope.TASK})


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class Flow:
    """One scripted OAuth client on one hub."""

    world: World
    http: httpx2.AsyncClient
    redirect_uri: str = CLAUDE
    client_id: str = ""
    verifier: str = ""
    issuer: str = ISSUER

    @property
    def resource(self) -> str:
        return self.issuer + "/mcp"

    async def register(self, **extra: Any) -> httpx2.Response:
        body = {"client_name": "Claude", "redirect_uris": [self.redirect_uri], "token_endpoint_auth_method": "none"}
        answer = await self.http.post("/register", json={**body, **extra})
        if answer.status_code == 201:
            self.client_id = answer.json()["client_id"]
        return answer

    async def authorize(self, **overrides: str) -> httpx2.Response:
        self.verifier, challenge = pkce()
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "st-1",
            "scope": "read post task",
            "resource": self.resource,
            **overrides,
        }
        return await self.http.get("/authorize?" + urlencode(params))

    async def request_id(self) -> str:
        answer = await self.authorize()
        assert answer.status_code == 302, answer.text
        location = urlsplit(answer.headers["location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == self.issuer + "/console/authorize"
        return parse_qs(location.query)["request"][0]

    async def approve(self, agent: str = "alice-claude", scopes: frozenset[Scope] = ALL) -> dict[str, str]:
        request_id = await self.request_id()
        async with self.world.hub() as hub:
            redirect = await hub.oauth.approve(request_id, alice(self.world), agent, scopes)
        return back(redirect, self.redirect_uri)

    async def exchange(self, code: str, **overrides: str) -> httpx2.Response:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": self.verifier,
            "resource": self.resource,
            **overrides,
        }
        return await self.http.post("/token", content=urlencode(form), headers=FORM)

    async def refresh(self, refresh_token: str, **overrides: str) -> httpx2.Response:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": self.client_id}
        return await self.http.post("/token", content=urlencode({**form, **overrides}), headers=FORM)

    async def tokens(self, agent: str = "alice-claude", scopes: frozenset[Scope] = ALL) -> dict[str, Any]:
        if not self.client_id:
            assert (await self.register()).status_code == 201
        answer = await self.exchange((await self.approve(agent, scopes))["code"])
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


def back(redirect: str, redirect_uri: str) -> dict[str, str]:
    """The parameters of a redirect back to the client; it must go to the client's own redirect URI."""
    parts = urlsplit(redirect)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == redirect_uri
    return {k: v[0] for k, v in parse_qs(parts.query).items()}


def alice(world: World) -> Human:
    [row] = world.sql("SELECT owner_id FROM owners WHERE handle = 'alice'")
    owner_id = row["owner_id"]
    return Human(audit.Actor("owner", owner_id, owner_id, via="console"), owner_id)


@asynccontextmanager
async def served(world: World, exposure: Exposure = PUBLIC) -> AsyncIterator[httpx2.AsyncClient]:
    async with open_http_app(world.settings, exposure=exposure) as app:
        transport = httpx2.ASGITransport(app=app, client=("203.0.113.7", 40000))
        base = exposure.issuer or "http://127.0.0.1:8765"
        async with httpx2.AsyncClient(transport=transport, base_url=base) as http:
            yield http


@asynccontextmanager
async def flow(world: World, redirect_uri: str = CLAUDE) -> AsyncIterator[Flow]:
    async with served(world) as http:
        yield Flow(world, http, redirect_uri)


async def whoami(http: httpx2.AsyncClient, access_token: str, base: str = ISSUER) -> dict[str, Any]:
    mcp_http = httpx2.AsyncClient(transport=http._transport, headers={"Authorization": f"Bearer {access_token}"})
    async with mcp_http, Client(streamable_http_client(f"{base}/mcp", http_client=mcp_http)) as c:
        answer = await c.call_tool("whoami", {})
    assert not answer.is_error, answer
    return dict(answer.structured_content or {})


async def mcp_status(http: httpx2.AsyncClient, token: str) -> int:
    """The HTTP status of one 2026-07-28-era request at /mcp with `token`: 200 once it authenticated."""
    envelope = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": envelope}}
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Mcp-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/list",
    }
    return (await http.post("/mcp", json=body, headers=headers)).status_code


def oauth_error(answer: httpx2.Response) -> str:
    return str(answer.json()["error"])


@pytest.mark.invariant(97, 105)
async def test_discover_register_authorize_exchange_call_refresh_revoke(world: World) -> None:
    async with flow(world) as f:
        # Discovery starts from the 401 at /mcp, which names the resource metadata.
        refused = await f.http.post("/mcp", json={})
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == (
            f'Bearer resource_metadata="{ISSUER}/.well-known/oauth-protected-resource/mcp"'
        )
        resource = (await f.http.get("/.well-known/oauth-protected-resource/mcp")).json()
        assert (await f.http.get("/.well-known/oauth-protected-resource")).json() == resource
        assert resource["resource"] == RESOURCE and resource["authorization_servers"] == [ISSUER]
        assert sorted(resource["scopes_supported"]) == ["post", "read", "task"]
        server = (await f.http.get("/.well-known/oauth-authorization-server")).json()
        assert server["issuer"] == ISSUER and server["code_challenge_methods_supported"] == ["S256"]
        assert server["authorization_response_iss_parameter_supported"] is True
        assert server["token_endpoint_auth_methods_supported"] == ["none"]

        registered = await f.register(application_type="web")
        assert registered.status_code == 201, registered.text
        assert registered.json()["token_endpoint_auth_method"] == "none"
        answer = await f.approve()
        assert answer["iss"] == ISSUER and answer["state"] == "st-1"
        exchanged = await f.exchange(answer["code"])
        assert exchanged.status_code == 200, exchanged.text
        assert exchanged.headers["cache-control"] == "no-store"
        pair = exchanged.json()
        assert pair["access_token"].startswith("aro_") and pair["refresh_token"].startswith("arf_")
        assert pair["token_type"] == "Bearer" and pair["expires_in"] == 3600
        who = await whoami(f.http, pair["access_token"])
        assert who["agent"]["handle"] == "alice-claude" and sorted(who["scopes"]) == ["post", "read", "task"]

        refreshed = await f.refresh(pair["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text
        second = refreshed.json()
        assert second["refresh_token"] != pair["refresh_token"] and second["access_token"] != pair["access_token"]
        assert (await whoami(f.http, second["access_token"]))["agent"]["handle"] == "alice-claude"

        form = {"token": second["refresh_token"], "client_id": f.client_id}
        revoked = await f.http.post("/revoke", content=urlencode(form), headers=FORM)
        assert revoked.status_code == 200
        # The whole family is gone: both access tokens, and the refresh token.
        assert await mcp_status(f.http, second["access_token"]) == 401
        assert await mcp_status(f.http, pair["access_token"]) == 401
        assert oauth_error(await f.refresh(second["refresh_token"])) == "invalid_grant"
    # No secret of the flow is stored in the clear, nor written to the audit log.
    dump = " ".join(
        str(tuple(r))
        for t in ("audit", "oauth_refresh", "tokens", "oauth_codes")
        for r in world.sql(f"SELECT * FROM {t}")
    )
    for secret in (pair["access_token"], pair["refresh_token"], second["refresh_token"], answer["code"]):
        assert secret not in dump


@pytest.mark.invariant(97)
async def test_a_wrong_verifier_is_refused_and_issues_nothing(world: World) -> None:
    async with flow(world) as f:
        await f.register()
        code = (await f.approve())["code"]
        before = world.fingerprint()
        for wrong in (pkce()[0], "short", ""):
            answer = await f.exchange(code, code_verifier=wrong)
            assert (answer.status_code, oauth_error(answer)) == (400, "invalid_grant"), wrong
        assert world.fingerprint() == before
        # The code itself is still good for its own verifier: a wrong guess did not spend it.
        assert (await f.exchange(code)).status_code == 200


@pytest.mark.invariant(97)
async def test_a_code_exchanged_for_another_resource_or_by_another_client_issues_nothing(world: World) -> None:
    async with flow(world) as f:
        await f.register()
        code = (await f.approve())["code"]
        before = world.fingerprint()
        for overrides, error in [
            ({"resource": "https://other.example/mcp"}, "invalid_target"),
            ({"client_id": "oac_someone_else"}, "invalid_grant"),
            ({"redirect_uri": "https://claude.com/api/mcp/auth_callback"}, "invalid_grant"),
            ({"grant_type": "password"}, "unsupported_grant_type"),
        ]:
            answer = await f.exchange(code, **overrides)
            assert (answer.status_code, oauth_error(answer)) == (400, error), overrides
        assert world.fingerprint() == before
        async with world.hub() as hub:
            pending = await hub.oauth.pending(await f.request_id())
        assert (pending.client_name, pending.client_host, pending.loopback) == ("Claude", None, False)


@pytest.mark.invariant(97)
async def test_a_reused_code_is_refused_and_revokes_what_it_bought(world: World) -> None:
    async with flow(world) as f:
        await f.register()
        code = (await f.approve())["code"]
        pair = (await f.exchange(code)).json()
        assert await mcp_status(f.http, pair["access_token"]) == 200
        again = await f.exchange(code)
        assert (again.status_code, oauth_error(again)) == (400, "invalid_grant")
        assert "access_token" not in again.json()
        assert await mcp_status(f.http, pair["access_token"]) == 401
        assert oauth_error(await f.refresh(pair["refresh_token"])) == "invalid_grant"


@pytest.mark.invariant(97)
async def test_a_refresh_token_rotates_the_replaced_one_works_once_more_then_revokes_the_family(world: World) -> None:
    async with flow(world) as f:
        first = await f.tokens()
        second = (await f.refresh(first["refresh_token"])).json()
        # A concurrent second refresh with the just-replaced token (within the grace) gets the very same pair.
        twin = await f.refresh(first["refresh_token"])
        assert twin.status_code == 200 and twin.json() == second
        # A third use is a reuse: refused, and the family (the pair handed out included) is revoked.
        reused = await f.refresh(first["refresh_token"])
        assert (reused.status_code, oauth_error(reused)) == (400, "invalid_grant")
        assert await mcp_status(f.http, second["access_token"]) == 401
        assert oauth_error(await f.refresh(second["refresh_token"])) == "invalid_grant"


@pytest.mark.invariant(97)
async def test_a_refresh_token_reused_after_the_grace_revokes_the_family(world: World) -> None:
    no_grace = replace(world.settings.limits, oauth_refresh_grace_s=0)
    world = replace(world, settings=replace(world.settings, limits=no_grace))
    async with flow(world) as f:
        first = await f.tokens()
        second = (await f.refresh(first["refresh_token"])).json()
        reused = await f.refresh(first["refresh_token"])
        assert oauth_error(reused) == "invalid_grant" and "access_token" not in reused.json()
        assert await mcp_status(f.http, second["access_token"]) == 401


@pytest.mark.invariant(97)
@pytest.mark.parametrize(
    "uri",
    [
        "https://evil.example/api/mcp/auth_callback",
        "https://claude.ai/api/mcp/auth_callback/",
        "https://claude.ai.evil.example/api/mcp/auth_callback",
        "http://claude.ai/api/mcp/auth_callback",
        "http://192.168.1.2:8080/callback",
        "http://localhost.evil.example/callback",
        "http://user@localhost/callback",
        "http://localhost/callback?x=1",
        "http://localhost/callback#f",
        "http://[::1]evil.example/callback",
        "http://[::1].evil.example:8080/callback",
        "http://localhost:0/callback",
        "myapp://callback",
    ],
)
async def test_a_foreign_redirect_uri_is_never_registered(world: World, uri: str) -> None:
    async with flow(world, uri) as f:
        before = world.fingerprint()
        answer = await f.register()
        assert (answer.status_code, oauth_error(answer)) == (400, "invalid_redirect_uri")
        assert world.fingerprint() == before


@pytest.mark.invariant(97)
async def test_authorize_with_a_foreign_redirect_uri_is_answered_here_not_redirected(world: World) -> None:
    async with flow(world, LOOPBACK) as f:
        await f.register(application_type="native")
        before = world.fingerprint()
        for uri in (CLAUDE, "http://localhost:53682/other", "http://127.0.0.1:53682/callback", "https://evil.example/"):
            answer = await f.authorize(redirect_uri=uri)
            assert (answer.status_code, oauth_error(answer)) == (400, "invalid_request"), uri
            assert "location" not in answer.headers
        unknown = await f.authorize(client_id="oac_nobody")
        assert (unknown.status_code, oauth_error(unknown)) == (400, "invalid_client")
        assert world.fingerprint() == before
        # Loopback: any port, the registered host and path (RFC 8252 §7.3; Claude Code picks a random port).
        f.redirect_uri = "http://localhost:61000/callback"
        pair = await f.tokens()
        assert (await whoami(f.http, pair["access_token"]))["agent"]["handle"] == "alice-claude"


@pytest.mark.invariant(97)
@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"resource": "https://other.example/mcp"}, "invalid_target"),
        ({"resource": ISSUER}, "invalid_target"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": ""}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "read consent"}, "invalid_scope"),
        ({"scope": "manage"}, "invalid_scope"),
        ({"scope": "invoke"}, "invalid_scope"),
    ],
)
async def test_a_bad_authorization_request_is_redirected_back_with_its_error_and_iss(
    world: World, overrides: dict[str, str], error: str
) -> None:
    async with flow(world) as f:
        await f.register()
        before = world.fingerprint()
        answer = await f.authorize(**overrides)
        assert answer.status_code == 302
        params = back(answer.headers["location"], CLAUDE)
        assert (params["error"], params["iss"], params["state"]) == (error, ISSUER, "st-1")
        assert world.fingerprint() == before


@pytest.mark.invariant(97)
async def test_a_denial_redirects_with_access_denied_and_iss(world: World) -> None:
    async with flow(world) as f:
        await f.register()
        request_id = await f.request_id()
        async with world.hub() as hub:
            redirect = await hub.oauth.deny(request_id, alice(world))
            assert back(redirect, CLAUDE) == {"error": "access_denied", "state": "st-1", "iss": ISSUER}
            with pytest.raises(RoomsError) as decided:  # a request is decided once
                await hub.oauth.approve(request_id, alice(world), "alice-claude", ALL)
            assert decided.value.code is ErrorCode.NOT_FOUND
    assert [r["action"] for r in world.audit_rows()][-1] == "oauth.deny"


@pytest.mark.invariant(32)
async def test_the_owner_grants_only_oauth_scopes_the_agent_holds_to_their_own_agent(world: World) -> None:
    async with flow(world) as f:
        await f.register()
        request_id = await f.request_id()
        before = world.fingerprint()
        async with world.hub() as hub:
            for agent, scopes, code in [
                ("alice-admin", frozenset({Scope.READ, Scope.MANAGE}), ErrorCode.INVALID_ARGUMENT),
                ("alice-claude", frozenset({Scope.CONSENT}), ErrorCode.INVALID_ARGUMENT),
                ("alice-mute", frozenset({Scope.READ}), ErrorCode.INVALID_ARGUMENT),  # holds no scope at all
                ("alice-claude", frozenset(), ErrorCode.INVALID_ARGUMENT),
                ("bob-claude", frozenset({Scope.READ}), ErrorCode.NOT_FOUND),  # another owner's agent
            ]:
                with pytest.raises(RoomsError) as refused:
                    await hub.oauth.approve(request_id, alice(world), agent, scopes)
                assert refused.value.code is code, (agent, scopes)
        assert world.fingerprint() == before


@pytest.mark.invariant(32)
async def test_an_oauth_token_holds_the_granted_scopes_intersected_with_the_agents_at_every_call(world: World) -> None:
    async with flow(world) as f:
        pair = await f.tokens("alice-admin", frozenset({Scope.READ, Scope.POST}))
        assert sorted((await whoami(f.http, pair["access_token"]))["scopes"]) == ["post", "read"]
        async with world.hub() as hub:
            await hub.accounts.set_scopes(OPERATOR, "alice-admin", parse_scopes("read,manage"))
        # The agent lost `post`: so did its OAuth token, from the next call; `manage` never reaches it.
        assert (await whoami(f.http, pair["access_token"]))["scopes"] == ["read"]


@pytest.mark.invariant(97, 105)
async def test_an_access_token_for_another_audience_is_refused(world: World) -> None:
    async with flow(world) as f:
        pair = await f.tokens()
    other = Exposure(public=("https", "other.example"), public_origin="https://other.example")
    async with served(world, other) as http:
        assert await mcp_status(http, pair["access_token"]) == 401
        # The same token where it belongs still works: the refusal was the audience, nothing else.
    async with served(world) as http:
        assert await mcp_status(http, pair["access_token"]) == 200
    # Off public mode (no resource at all) no OAuth token is accepted.
    async with served(world, Exposure()) as http:
        assert await mcp_status(http, pair["access_token"]) == 401
    reasons = [r["reason"] for r in world.audit_rows() if r["action"] == "auth.authenticate"]
    assert "wrong_audience" in reasons and "wrong_credential_kind" in reasons


@pytest.mark.invariant(105)
async def test_each_oauth_token_kind_is_accepted_only_where_it_belongs(world: World) -> None:
    async with flow(world) as f:
        pair = await f.tokens()
        before = world.fingerprint()
        # A refresh token at /mcp, an access token at the owner API: refused before any lookup.
        assert await mcp_status(f.http, pair["refresh_token"]) == 401
        owner_api = await f.http.post(
            "/owner/v1/actions/agent.list", json={}, headers={"Authorization": f"Bearer {pair['access_token']}"}
        )
        assert owner_api.status_code == 401
        # At /token only a refresh token refreshes: not the access token, not an agent's bearer token.
        for wrong in (pair["access_token"], world.tokens["alice-claude"]):
            answer = await f.refresh(wrong)
            assert (answer.status_code, oauth_error(answer)) == (400, "invalid_grant")
        assert world.fingerprint() == before
    reasons = [r["reason"] for r in world.audit_rows() if r["action"] == "auth.authenticate"]
    assert reasons.count("wrong_credential_kind") >= 1


@pytest.mark.invariant(97)
async def test_a_connectors_tokens_die_with_its_agent(world: World) -> None:
    async with flow(world) as f:
        pair = await f.tokens("alice-codex")
        async with world.hub() as hub:
            await hub.containment.delete_agent(OPERATOR, "alice-codex")
        assert await mcp_status(f.http, pair["access_token"]) == 401
        refused = await f.refresh(pair["refresh_token"])
        assert (refused.status_code, oauth_error(refused)) == (400, "invalid_grant")


async def test_token_list_shows_a_connector_and_token_revoke_ends_its_family(world: World) -> None:
    async with flow(world) as f:
        pair = await f.tokens()
        second = (await f.refresh(pair["refresh_token"])).json()
        async with world.hub() as hub:
            listed = [t for t in (await hub.accounts.list_tokens("alice-claude")).tokens]
            # The agent's own bearer token, and the connector once (by its newest access token).
            assert len(listed) == 2
            [oauth] = [t for t in listed if t.token_id != world.token_ids["alice-claude"]]
            revoked = await hub.containment.revoke_token(hub.accounts, OPERATOR, oauth.token_id)
            assert revoked.status == "revoked"
        for token in (pair["access_token"], second["access_token"]):
            assert await mcp_status(f.http, token) == 401
        assert oauth_error(await f.refresh(second["refresh_token"])) == "invalid_grant"
        # The agent's own bearer token is untouched.
        assert await mcp_status(f.http, world.tokens["alice-claude"]) == 200


async def test_token_revoke_json_on_a_connector_prints_one_json_document(world: World) -> None:
    """Revoking a connector's token logs its family's end; that line must not land in the JSON on stdout (it
    did, unconfigured structlog writing to stdout, breaking `token revoke ID --json` for the real CLI's token)."""
    async with flow(world) as f:
        await f.tokens()
    env = {"AGENT_ROOMS_HOME": str(world.settings.home)}

    def ar(*args: str) -> Result:
        return CliRunner().invoke(cli, [*args, "--json"], env=env)

    listed = json.loads((await anyio.to_thread.run_sync(ar, "token", "list", "alice-claude")).stdout)["tokens"]
    [oauth] = [t for t in listed if t["token_id"] != world.token_ids["alice-claude"]]
    done = await anyio.to_thread.run_sync(ar, "token", "revoke", oauth["token_id"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["status"] == "revoked"


async def test_registration_is_limited_per_source(world: World) -> None:
    limits = replace(world.settings.limits, oauth_register_per_source_per_h=2)
    world = replace(world, settings=replace(world.settings, limits=limits))
    async with flow(world) as f:
        assert [(await f.register()).status_code for _ in range(3)] == [201, 201, 429]


async def test_the_per_source_limits_count_an_ipv6_host_by_its_64(world: World) -> None:
    """/register and /authorize count a source as every per-source count does (auth/failures.source_of): one host
    holding a /64 (what a cheap VPS is given) cannot rotate its addresses past the limit; another /64 is
    another source."""
    limits = replace(
        world.settings.limits,
        oauth_register_per_source_per_h=2,
        oauth_authorize_per_source_per_h=2,
        oauth_requests_pending_max=100,
    )
    world = replace(world, settings=replace(world.settings, limits=limits))
    async with open_http_app(world.settings, exposure=PUBLIC) as app, AsyncExitStack() as clients:

        async def at(address: str) -> Flow:
            transport = httpx2.ASGITransport(app=app, client=(address, 40000))
            http = await clients.enter_async_context(httpx2.AsyncClient(transport=transport, base_url=ISSUER))
            return Flow(world, http)

        registered = [(await (await at(f"2001:db8:1:1::{n + 1:x}")).register()).status_code for n in range(6)]
        assert registered == [201, 201, 429, 429, 429, 429]
        other = await at("2001:db8:1:2::1")
        assert (await other.register()).status_code == 201
        asked = []
        for n in range(6):
            f = await at(f"2001:db8:1:1:{n + 1:x}::")
            f.client_id = other.client_id
            asked.append((await f.authorize()).status_code)
        assert asked == [302, 302, 429, 429, 429, 429]
        assert (await other.authorize()).status_code == 302


async def test_the_registration_limit_in_all_outlives_a_restart(world: World) -> None:
    """The per-source count lives in the serving process; the count in all is the registrations themselves, so a
    restarted hub (or another process on the same database) does not hand out a fresh hour."""
    limits = replace(world.settings.limits, oauth_register_per_h=2)
    world = replace(world, settings=replace(world.settings, limits=limits))
    async with flow(world) as f:
        assert [(await f.register()).status_code for _ in range(2)] == [201, 201]
    async with flow(world) as restarted:
        refused = await restarted.register()
        assert (refused.status_code, oauth_error(refused)) == (429, "RATE_LIMITED")
        assert refused.headers["retry-after"] == "3600"
    assert world.sql("SELECT count(*) FROM oauth_clients")[0][0] == 2


async def test_anonymous_authorization_requests_cannot_fill_the_database(world: World) -> None:
    """`/authorize` stores each request before anyone logs in: a long `state`, a flood from one source and
    too many waiting at once are each refused, storing nothing."""
    limits = replace(world.settings.limits, oauth_authorize_per_source_per_h=4, oauth_requests_pending_max=2)
    world = replace(world, settings=replace(world.settings, limits=limits))
    async with flow(world) as f:
        await f.register()
        long = await f.authorize(state="s" * (limits.oauth_state_max_bytes + 1))
        assert (long.status_code, oauth_error(long)) == (400, "invalid_request") and "location" not in long.headers
        assert [(await f.authorize()).status_code for _ in range(2)] == [302, 302]
        full = await f.authorize()
        assert (full.status_code, oauth_error(full)) == (400, "temporarily_unavailable")
        assert (await f.authorize()).status_code == 429  # the fifth from this source within the hour
    assert world.sql("SELECT count(*) AS n FROM oauth_requests")[0]["n"] == 2


async def test_the_sweep_deletes_clients_never_approved_and_expired_requests(world: World) -> None:
    async with flow(world) as f:
        await f.register()
        idle = f.client_id
        await f.request_id()  # a request left pending, of a client never approved
        f.client_id = ""
        assert (await f.tokens())["access_token"]  # a second client, approved
    async with world.hub() as hub:
        assert (await hub.oauth.sweep())["clients"] == 0
        later = await hub.oauth.sweep(datetime.now(UTC) + timedelta(hours=25))
    assert later["clients"] == 1 and later["requests"] == 1
    left = {r["client_id"] for r in world.sql("SELECT client_id FROM oauth_clients")}
    assert idle not in left and f.client_id in left


async def test_oauth_endpoints_exist_only_in_public_mode(world: World) -> None:
    async with served(world, Exposure()) as http:
        assert (await http.get("/.well-known/oauth-authorization-server")).status_code != 200
        refused = await http.post("/mcp", json={})
        assert (refused.status_code, refused.headers["www-authenticate"]) == (401, "Bearer")


@pytest.mark.invariant(14)
async def test_an_expired_access_token_gets_the_same_401_and_does_not_count_against_the_failure_limit(
    world: World,
) -> None:
    limits = replace(world.settings.limits, failed_auth_limit=1, failed_auth_window_s=10**9)
    world = replace(world, settings=replace(world.settings, limits=limits))
    async with flow(world) as f:
        pair = await f.tokens()
        with closing(sqlite3.connect(world.db)) as conn, conn:  # an hour later, as far as the token knows
            conn.execute("UPDATE tokens SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE grant_id IS NOT NULL")
        answers = [await f.http.post("/mcp", json={}, headers={"Authorization": f"Bearer {pair['access_token']}"})
                   for _ in range(3)]  # fmt: skip
        assert [a.status_code for a in answers] == [401, 401, 401]
        assert len({(a.text, a.headers["www-authenticate"]) for a in answers}) == 1
        # An unknown token from the same source is counted as ever: past the limit, 429.
        unknown = f"aro_{secrets.token_urlsafe(32)}"
        codes = [(await f.http.post("/mcp", json={}, headers={"Authorization": f"Bearer {unknown}"})).status_code
                 for _ in range(3)]  # fmt: skip
        assert codes == [401, 429, 429]
    assert [r["reason"] for r in world.audit_rows() if r["action"] == "auth.authenticate"].count("token_expired") == 3


@pytest.mark.invariant(107)
async def test_a_restore_revokes_every_connector_through_the_credential_registry(world: World) -> None:
    async with flow(world) as f:
        first, second = await f.tokens(), await f.tokens("alice-codex")
        async with world.hub() as hub:
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            revoked = await hub.store.write(lambda c: revoke_all(c, now))
        assert revoked["oauth_grants"] == 2
        for pair in (first, second):
            assert await mcp_status(f.http, pair["access_token"]) == 401
            assert oauth_error(await f.refresh(pair["refresh_token"])) == "invalid_grant"


async def test_a_deleted_agent_with_a_connector_is_purged_with_its_grants(world: World) -> None:
    async with flow(world) as f:
        pair = await f.tokens("alice-codex")
        await f.refresh(pair["refresh_token"])
    async with world.hub() as hub:
        await hub.containment.delete_agent(OPERATOR, "alice-codex")
        month_later = Purge(hub.store, world.settings, clock=lambda: datetime.now(UTC) + timedelta(days=31))
        await month_later.run(OPERATOR)
    for table in ("oauth_grants", "oauth_refresh", "oauth_codes"):
        assert world.sql(f"SELECT count(*) FROM {table}")[0][0] == 0, table
    assert world.sql("SELECT count(*) FROM tokens WHERE grant_id IS NOT NULL")[0][0] == 0


@pytest.mark.invariant(14)
async def test_guessing_at_the_token_endpoint_meets_the_failed_authentication_limit(world: World) -> None:
    limits = replace(world.settings.limits, failed_auth_limit=2, failed_auth_window_s=10**9)
    world = replace(world, settings=replace(world.settings, limits=limits))
    async with flow(world) as f:
        pair = await f.tokens()
        before = world.fingerprint()
        guess = f"arf_{secrets.token_urlsafe(32)}"
        assert [(await f.refresh(guess)).status_code for _ in range(3)] == [400, 400, 429]
        assert world.fingerprint() == before
        # The family's own refresh token, another credential, still works.
        assert (await f.refresh(pair["refresh_token"])).status_code == 200
    reasons = [r["reason"] for r in world.audit_rows() if r["action"] == "auth.authenticate"]
    assert "oauth_refresh_token" in reasons


# Refused requests at the endpoints: each kind leaves its audit row, a flood a bounded number.


def denials(world: World, action: str) -> list[sqlite3.Row]:
    return [r for r in world.audit_rows() if r["action"] == action and r["outcome"] == "denied"]


def audit_dump(world: World) -> str:
    return " ".join(str(tuple(r)) for r in world.audit_rows())


async def test_each_refusal_at_an_oauth_endpoint_leaves_one_denial_row_naming_code_client_and_source(
    world: World,
) -> None:
    limits = replace(
        world.settings.limits,
        oauth_register_per_source_per_h=3,
        oauth_authorize_per_source_per_h=9,
        oauth_refusal_rows_per_source=20,  # one source here, refused in nine ways
    )
    world = replace(world, settings=replace(world.settings, limits=limits))
    async with flow(world) as f:
        assert (await f.register(redirect_uris=["https://evil.example/cb"])).status_code == 400
        await f.register()
        client = f.client_id
        assert (await f.authorize(redirect_uri="https://evil.example/cb")).status_code == 400
        assert (await f.authorize(scope="manage")).status_code == 302  # sent back to the client with its error
        code = (await f.approve())["code"]
        assert (await f.exchange(code, resource="https://other.example/mcp")).status_code == 400
        assert (await f.exchange(code, grant_type="password")).status_code == 400
        form = {"token": f"arf_{secrets.token_urlsafe(32)}", "client_id": client}
        assert (await f.http.post("/revoke", content=urlencode(form), headers=FORM)).status_code == 200
        assert (await f.http.post("/revoke", json=form)).status_code == 400  # not a form
        assert [(await f.register()).status_code for _ in range(2)] == [201, 429]
        f.client_id = client
        # Past the per-source limit of /authorize (9 here; three asked above).
        assert [(await f.authorize()).status_code for _ in range(7)] == [302] * 6 + [429]
    rows = {(r["action"], r["reason"]): r for r in world.audit_rows() if r["outcome"] == "denied"}
    expected = {
        ("oauth.client.register", "invalid_redirect_uri"): None,
        ("oauth.client.register", "rate_limited"): None,
        ("oauth.authorize", "invalid_request"): client,
        ("oauth.authorize", "invalid_scope"): client,
        ("oauth.authorize", "rate_limited"): client,
        ("oauth.token", "invalid_target"): client,
        ("oauth.token", "unsupported_grant_type"): client,
        ("oauth.revoke", "not_revoked"): client,
        ("oauth.revoke", "invalid_request"): None,
    }
    assert set(expected) <= set(rows), set(expected) - set(rows)
    for key, target in expected.items():
        row = rows[key]
        assert (row["actor_kind"], row["target"]) == ("anonymous", target), key
        assert json.loads(row["detail"]) == {"source": "203.0.113.7"}, key
    # The code, its verifier and the token revoked are in no row.
    dump = audit_dump(world)
    for secret in (code, f.verifier, form["token"]):
        assert secret not in dump


async def test_a_metadata_document_clients_refusal_names_its_host_and_keeps_its_url_only_hashed(world: World) -> None:
    async with flow(world) as f:
        f.client_id = "https://10.0.0.1/client.json"  # never fetched: not a public address
        assert (await f.authorize()).status_code == 400
    [row] = denials(world, "oauth.authorize")
    assert row["reason"] == "invalid_client" and row["target"].startswith("sha256:")
    assert json.loads(row["detail"]) == {"source": "203.0.113.7", "client_host": "10.0.0.1"}


async def test_a_flood_of_refusals_leaves_one_row_per_kind_and_source_in_a_window(world: World) -> None:
    limits = replace(world.settings.limits, oauth_register_per_source_per_h=5, oauth_refusal_window_s=10**6)
    world = replace(world, settings=replace(world.settings, limits=limits))
    async with flow(world) as f:
        answers = [(await f.register(redirect_uris=["https://evil.example/cb"])).status_code for _ in range(100)]
        assert answers.count(400) == 5 and answers.count(429) == 95
        for _ in range(100):
            assert (await f.authorize(client_id="oac_nobody")).status_code == 400
    assert sorted(r["reason"] for r in denials(world, "oauth.client.register")) == [
        "invalid_redirect_uri",
        "rate_limited",
    ]
    assert len(denials(world, "oauth.authorize")) == 1


async def test_refusals_past_the_rows_are_counted_into_one_summary_per_source_when_the_window_ends(
    world: World,
) -> None:
    """Many sources, many kinds: each window writes at most sources × rows + sources + 1 rows, and the
    summaries hold every refusal that had no row of its own."""
    limits = replace(
        world.settings.limits,
        oauth_refusal_window_s=60,
        oauth_refusal_rows_per_source=2,
        oauth_refusal_sources_per_window=10,
    )
    now = [1_000_020.0]
    async with world.hub() as hub:
        trace = RefusalTrace(hub.store, limits, clock=lambda: now[0])
        before = len(world.audit_rows())
        for n in range(600):
            source = f"198.51.100.{n % 30}"  # 30 sources; 10 get rows, 20 are counted together
            error = ("invalid_client", "invalid_request", "invalid_scope")[n // 30 % 3]
            await trace.refused("oauth.authorize", error, address=source, client_id=None)
        first = world.audit_rows()[before:]
        assert len(first) == 10 * 2  # each of 10 sources: its first 2 kinds
        now[0] += 60  # the window is over: the next refusal writes its summaries, then its own row
        await trace.refused("oauth.token", "invalid_target", address="198.51.100.1", client_id=None)
    rows = world.audit_rows()[before:]
    summaries = [r for r in rows if r["action"] == "oauth.refusals"]
    assert len(summaries) == 10 + 1  # one per source with rows, one for the other 20 together (`*`)
    assert len(rows) == 20 + 11 + 1 <= 10 * 2 + 10 + 1 + 1
    counted = {r["target"]: json.loads(r["detail"]) for r in summaries}
    assert counted["*"]["refusals"] == 400 and counted["198.51.100.0"]["refusals"] == 20
    assert sum(d["refusals"] for d in counted.values()) == 600
    assert counted["198.51.100.0"]["kinds"] == {
        "oauth.authorize invalid_client": 7,
        "oauth.authorize invalid_request": 7,
        "oauth.authorize invalid_scope": 6,
    }
    # A window whose refusals are only counted is summarised by the sweep too, with no refusal after it.
    async with world.hub() as hub:
        trace = RefusalTrace(hub.store, limits, clock=lambda: now[0])
        for _ in range(3):
            await trace.refused("oauth.token", "invalid_target", address="192.0.2.1", client_id=None)
        await trace.flush()  # the window is not over: nothing yet
        assert world.audit_rows()[-1]["action"] == "oauth.token"
        now[0] += 60
        await trace.flush()
    last = world.audit_rows()[-1]
    assert (last["action"], last["target"], json.loads(last["detail"])["refusals"]) == (
        "oauth.refusals",
        "192.0.2.1",
        3,
    )
    assert audit_verified(world)


def refusal_summaries(world: World) -> list[tuple[str, int]]:
    rows = world.sql("SELECT target, detail FROM audit WHERE action = 'oauth.refusals' ORDER BY seq")
    return [(r["target"], json.loads(r["detail"])["refusals"]) for r in rows]


def long_refusal_windows(world: World) -> World:
    """A window far longer than a test: none ends unless a test says the time is later."""
    limits = replace(world.settings.limits, oauth_refusal_window_s=10**6)
    return replace(world, settings=replace(world.settings, limits=limits))


async def test_the_hubs_sweep_writes_the_refusal_summary_of_a_window_that_is_over(world: World) -> None:
    world = long_refusal_windows(world)
    async with world.hub() as hub:
        for _ in range(3):
            await hub.oauth.refusals.refused("oauth.token", "invalid_target", address="192.0.2.1", client_id=None)
        await hub.oauth.sweep()
        assert refusal_summaries(world) == []  # the window is under way
        await hub.oauth.sweep(datetime.now(UTC) + timedelta(seconds=10**6))
        assert refusal_summaries(world) == [("192.0.2.1", 3)]


async def test_the_refusal_counts_of_the_window_under_way_are_written_as_the_hub_closes(world: World) -> None:
    world = long_refusal_windows(world)
    async with flow(world) as f:
        for _ in range(4):
            assert (await f.authorize(client_id="oac_nobody")).status_code == 400
        assert refusal_summaries(world) == []
    assert refusal_summaries(world) == [("203.0.113.7", 4)]
    assert audit_verified(world)


async def test_a_refusal_summary_not_written_keeps_its_counts_and_the_sweep_goes_on(world: World) -> None:
    """The database refuses the summary (a trigger stands for a full disk): the sweep still deletes the stale
    client, and the window's counts wait for the next sweep, which writes them whole."""
    world = long_refusal_windows(world)
    later = datetime.now(UTC) + timedelta(seconds=10**6)
    async with world.hub() as hub:
        for _ in range(5):
            await hub.oauth.refusals.refused("oauth.token", "invalid_target", address="192.0.2.1", client_id=None)
        await hub.oauth.register(
            {"client_name": "Idle", "redirect_uris": [CLAUDE], "token_endpoint_auth_method": "none"}
        )
        with closing(sqlite3.connect(world.db)) as conn, conn:
            conn.execute(
                "CREATE TRIGGER no_summaries BEFORE INSERT ON audit WHEN NEW.action = 'oauth.refusals'"
                " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        assert (await hub.oauth.sweep(later))["clients"] == 1
        assert refusal_summaries(world) == []
        with closing(sqlite3.connect(world.db)) as conn, conn:
            conn.execute("DROP TRIGGER no_summaries")
        await hub.oauth.sweep(later)
        assert refusal_summaries(world) == [("192.0.2.1", 5)]
    assert audit_verified(world)


def audit_verified(world: World) -> bool:
    with closing(sqlite3.connect(world.db)) as conn:
        conn.row_factory = sqlite3.Row
        return audit.verify(conn).ok
