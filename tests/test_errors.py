"""Tool errors in DESIGN §7's one shape, whichever path produced them: the code leads the text and sits in
`_meta` under `agent-rooms/error`, and there is no structuredContent for a client to check against the tool's
outputSchema (invariant 88)."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from agent_rooms_mcp.content import UNENCODABLE, unencodable_field
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.gate import ERROR_META_KEY, error_result
from agent_rooms_mcp.http import open_http_app
from tests.conftest import HTTP_BASE, World
from tests.tool_errors import error_code, error_detail

# One call per path an error can take: a service refusal, the SDK's argument check, the SDK's tool lookup.
FAILING_CALLS: dict[str, tuple[str, dict[str, Any], str]] = {
    "service": ("read_messages", {"room": "nowhere"}, "NOT_FOUND"),
    "arguments": ("read_messages", {"room": "lobby", "limit": 0}, "INVALID_ARGUMENT"),
    "too_large": ("create_task", {"room": "lobby", "title": "t" * 201}, "TOO_LARGE"),
    "unknown_tool": ("no_such_tool", {}, "NOT_FOUND"),
}


def envelope(r: CallToolResult) -> set[str]:
    """The `_meta` keys a result carries besides our error detail (the SDK's stamps, era by era)."""
    return set(r.meta or {}) - {ERROR_META_KEY}


@pytest.mark.invariant(88)
async def test_every_tool_error_path_gives_the_code_in_text_and_meta_and_no_structured_content(
    world: World, transport: str, mode: str
) -> None:
    async with world.session("alice-claude", transport, mode) as c:
        fine = await c.call_tool("whoami", {})
        failed = {path: await c.call_tool(tool, args) for path, (tool, args, _) in FAILING_CALLS.items()}
    assert not fine.is_error
    for path, r in failed.items():
        assert error_code(r) == FAILING_CALLS[path][2], (path, r.content)
        # The same envelope as a success: the SDK shaped it for this era, not a short-cut around it.
        assert envelope(r) == envelope(fine), path
    assert error_detail(failed["arguments"]) == {
        "code": "INVALID_ARGUMENT",
        "message": "limit: Input should be greater than or equal to 1",
    }


@pytest.mark.invariant(88)
@pytest.mark.parametrize("transport_", ["memory", "stdio"])
async def test_an_authentication_failure_has_the_same_shape_as_any_other_error(
    world: World, transport_: str, mode: str
) -> None:
    async with world.session("alice-claude", transport_, mode) as c:
        fine = await c.call_tool("whoami", {})
    world.tokens["stranger"] = "art_" + "x" * 43  # token-shaped, issued to nobody
    async with world.session("stranger", transport_, mode) as c:
        refused = await c.call_tool("read_messages", {"room": "lobby"})
    assert error_detail(refused) == {"code": "UNAUTHENTICATED", "message": "invalid or revoked credentials"}
    assert envelope(refused) == envelope(fine)


class Recording(httpx2.AsyncBaseTransport):
    """The in-process ASGI transport, keeping each JSON-RPC reply exactly as it went over the wire."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self.inner = inner
        self.replies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        if response.headers.get("content-type", "").startswith("application/json") and body:
            self.replies.append(json.loads(body))
        return httpx2.Response(response.status_code, headers=response.headers, content=body)


@pytest.mark.invariant(88)
async def test_on_the_wire_every_error_has_the_keys_of_a_success_but_structured_content(
    world: World, mode: str
) -> None:
    """`resultType` on 2026-07-28 and only there, whichever path answered: one error reply carried it on
    the legacy wire and another did not, when errors were answered from the SDK's middleware."""
    async with open_http_app(world.settings) as app:
        wire = Recording(httpx2.ASGITransport(app=app))
        http = httpx2.AsyncClient(transport=wire, headers={"Authorization": f"Bearer {world.tokens['alice-claude']}"})
        async with http, Client(streamable_http_client(f"{HTTP_BASE}/mcp", http_client=http), mode=mode) as c:
            await c.call_tool("whoami", {})
            for tool, args, _ in FAILING_CALLS.values():
                await c.call_tool(tool, args)
    results = [r["result"] for r in wire.replies if "isError" in r.get("result", {})]
    fine, *failed = results
    assert len(failed) == len(FAILING_CALLS)
    assert {"content", "structuredContent", "isError"} <= set(fine)
    for r in failed:
        assert set(r) == set(fine) - {"structuredContent"} | {"_meta"}, r
        assert r["_meta"][ERROR_META_KEY]["code"] == r["content"][0]["text"].split(":", 1)[0]
    assert ("resultType" in fine) == (mode == "auto")


@pytest.mark.invariant(88)
def test_a_rate_limit_says_when_to_try_again() -> None:
    r = error_result(RoomsError(ErrorCode.RATE_LIMITED, "too many posts", retry_after_ms=1500))
    assert error_detail(r) == {"code": "RATE_LIMITED", "message": "too many posts", "retry_after_ms": 1500}
    assert error_detail(error_result(RoomsError(ErrorCode.CONFLICT, "taken"))) == {
        "code": "CONFLICT",
        "message": "taken",
    }


async def test_a_mention_that_is_no_member_is_refused_and_one_that_is_no_handle_refuses_the_post(
    world: World, transport: str
) -> None:
    """DESIGN §3.1: a handle in `mentions` that is not a member of the room comes back `refused` with
    NOT_FOUND, whether it names another room's agent or nobody; an @word in the text that is not a member
    is plain text; a `mentions` entry that cannot be a handle refuses the call, naming the entry."""
    before = world.fingerprint()
    async with world.session("alice-claude", transport, "auto") as c:
        malformed = await c.call_tool("post_message", {"room": "lobby", "text": "hi", "mentions": ["Bob Claude"]})
        unchanged = world.fingerprint()
        posted = await c.call_tool(
            "post_message",
            {"room": "lobby", "text": "hi @carol-claude", "mentions": ["bob-claude", "nobody", "alice-codex"]},
        )
    assert error_code(malformed) == "INVALID_ARGUMENT" and "mentions.0" in error_detail(malformed)["message"]
    assert unchanged == before
    assert [(m["handle"], m["outcome"], m["code"]) for m in posted.structured_content["mentions"]] == [
        ("bob-claude", "refused", "NOT_FOUND"),
        ("nobody", "refused", "NOT_FOUND"),
        ("alice-codex", "notified", None),
    ]


async def test_each_list_tools_limit_says_what_it_counts(world: World) -> None:
    """A model reads `limit`'s description to size its page: "messages" on list_tasks misled it."""
    counts = {
        "read_messages": "messages",
        "wait_for_messages": "messages",
        "list_tasks": "tasks",
        "list_pending_consents": "proposals",
        "list_runs": "runs",
    }
    async with world.client("alice-claude") as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    for name, what in counts.items():
        description = tools[name].input_schema["properties"]["limit"]["description"]
        assert description.startswith(f"At most this many {what} "), (name, description)


class Surrogates(httpx2.AsyncBaseTransport):
    """Sends what a client in another language may: JSON's escape of a lone surrogate, which Python's own
    client cannot encode, written over a marker in the request body."""

    MARK = "@SURROGATE@"

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        if self.MARK.encode() in body:
            headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "content-length"]
            body = body.replace(self.MARK.encode(), b"\\ud800")
            request = httpx2.Request(request.method, request.url, headers=headers, content=body)
        return await self.inner.handle_async_request(request)


async def test_a_lone_surrogate_in_a_string_argument_is_refused_naming_the_field(world: World) -> None:
    """JSON's `\\ud800` decodes to a string UTF-8 cannot hold: every type check passes it, and SQLite then
    failed on it with a crash that is no code of ours. Sent over the wire, as any client could."""
    mark = Surrogates.MARK
    async with open_http_app(world.settings) as app:
        http = httpx2.AsyncClient(
            transport=Surrogates(httpx2.ASGITransport(app=app)),
            headers={"Authorization": f"Bearer {world.tokens['alice-claude']}"},
        )
        async with http, Client(streamable_http_client(f"{HTTP_BASE}/mcp", http_client=http)) as c:
            before = world.fingerprint()
            posted = await c.call_tool("post_message", {"room": "lobby", "text": f"hi {mark} there"})
            task = await c.call_tool("create_task", {"room": "lobby", "title": "fine", "description": mark})
            room = await c.call_tool("read_messages", {"room": f"lob{mark}by"})
            assert world.fingerprint() == before
            # The control: the same call with valid text goes through.
            assert not (await c.call_tool("post_message", {"room": "lobby", "text": "hi \U0001f600"})).is_error
    assert error_detail(posted) == {"code": "INVALID_ARGUMENT", "message": f"text: {UNENCODABLE}"}
    assert error_detail(task) == {"code": "INVALID_ARGUMENT", "message": f"description: {UNENCODABLE}"}
    assert error_detail(room) == {"code": "INVALID_ARGUMENT", "message": f"room: {UNENCODABLE}"}
    assert world.fingerprint() != before


def test_the_unencodable_field_is_named_by_its_path() -> None:
    assert unencodable_field({"a": ["ok", {"b": "x\ud800"}]}) == "a.1.b"
    assert unencodable_field({"a": {"\ud800": "ok"}}) == "a"  # a bad key: its parent, never the key itself
    assert unencodable_field("\udc80") == "arguments"
    assert unencodable_field({"a": ["ok", 1, None, {"b": "é\U0001f600"}]}) is None
