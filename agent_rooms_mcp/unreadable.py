"""The answer a stdio server owes a line that is not a JSON-RPC message, which the SDK would drop without one.

JSON-RPC 2.0 answers such a line with `id: null`: -32700 for a line that is not JSON, -32600 for JSON that is
not a message (the codes the SDK's stateless HTTP transport sends for such a body), and -32600 naming the cap for
a line over `stdio_line_bytes` (`lines.BoundedLines` puts a stand-in in its place; HTTP refuses such a body with
TOO_LARGE). The answer names the line by its number and says what was wrong with it; it never quotes the line,
which may hold a token. Decides only: the doorway in stdio.py writes the answer.
"""

from __future__ import annotations

import re

from mcp.shared.message import SessionMessage
from mcp.types import INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError, JSONRPCNotification, JSONRPCRequest
from pydantic import ValidationError

from agent_rooms_mcp.lines import TOO_LARGE_METHOD, too_large_message

# What of the JSON parser's complaint may be shown ("expected value at line 1 column 1"): it names a position and
# never quotes the input, and anything else is left out rather than trusted.
_PARSER_SAYS = re.compile(r"[a-zA-Z ]{1,60} at line 1 column \d{1,9}")
_NOT_AN_OBJECT = {list: "an array (batches are not accepted)", str: "a string", bool: "a boolean", int: "a number",
                  float: "a number", type(None): "null"}  # fmt: skip


def answer_for(item: SessionMessage | Exception, line: int, limit: int) -> JSONRPCError | None:
    """The error answer to the `line`th item read from stdin, or None for a message to pass on to the SDK.

    >>> from mcp.types import jsonrpc_message_adapter as messages
    >>> def read(text):
    ...     try:
    ...         return SessionMessage(messages.validate_json(text, by_name=False))
    ...     except ValidationError as e:
    ...         return e
    >>> answer_for(read("art_secret please"), 3, 100).error.message
    'Parse error: line 3 is not JSON (expected value at column 1)'
    >>> answer_for(read("[1, 2]"), 4, 100).error.message
    'Invalid Request: line 4 is JSON but not a JSON-RPC message: it is an array (batches are not accepted)'
    >>> answer_for(read('{"jsonrpc": "2.0", "id": 1, "method": "ping"}'), 5, 100) is None
    True
    """
    if isinstance(item, ValidationError):
        return _unreadable(item, line)
    message = item.message if isinstance(item, SessionMessage) else None
    if isinstance(message, JSONRPCRequest | JSONRPCNotification) and message.method == TOO_LARGE_METHOD:
        return _error(
            message.id if isinstance(message, JSONRPCRequest) else None, INVALID_REQUEST, too_large_message(limit)
        )
    return None


def _unreadable(exc: ValidationError, line: int) -> JSONRPCError | None:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        if not str(errors[0]["input"]).strip():
            return None  # an empty line: nothing was sent, and the SDK passes over it
        said = _PARSER_SAYS.fullmatch(str((errors[0].get("ctx") or {}).get("error", "")))
        detail = f" ({said.group().replace('line 1 column', 'column')})" if said else ""
        return _error(None, PARSE_ERROR, f"Parse error: line {line} is not JSON{detail}")
    # The SDK tries each kind of message in turn; a value that is not an object fails each at the top.
    top: object = next((e["input"] for e in errors if e["type"] == "model_type" and len(e["loc"]) == 1), {})
    what = (
        f"it is {_NOT_AN_OBJECT.get(type(top), 'not an object')}"
        if not isinstance(top, dict)
        else 'it needs "jsonrpc": "2.0" and a "method" (a request or notification), or an "id" with a "result" or'
        ' an "error" (a response)'
    )
    return _error(None, INVALID_REQUEST, f"Invalid Request: line {line} is JSON but not a JSON-RPC message: {what}")


def _error(request_id: str | int | None, code: int, message: str) -> JSONRPCError:
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message))
