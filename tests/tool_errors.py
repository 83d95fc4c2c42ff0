"""Reading a tool error the way DESIGN §7 shapes it, for every test that expects one."""

from __future__ import annotations

from typing import Any

from mcp.types import CallToolResult

from agent_rooms_mcp.gate import ERROR_META_KEY


def error_detail(r: CallToolResult) -> dict[str, Any]:
    """`_meta["agent-rooms/error"]` of an error result, having checked the one shape (invariant 88):
    no structuredContent, one text block that starts with the same code and message."""
    assert r.is_error, r.content
    assert r.structured_content is None, r.structured_content
    detail = dict((r.meta or {})[ERROR_META_KEY])
    assert [c.text for c in r.content] == [f"{detail['code']}: {detail['message']}"]  # type: ignore[union-attr]
    return detail


def error_code(r: CallToolResult) -> str:
    """The code of an error result (NOT_FOUND, FORBIDDEN_SCOPE, ...), its shape checked on the way."""
    return str(error_detail(r)["code"])
