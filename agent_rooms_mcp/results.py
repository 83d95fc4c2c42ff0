"""A tool's result as the client receives it: the compact JSON text block a structured result is also sent as,
and the bytes a result takes across both renderings, which the page caps count.

Apart from `services/render.py` (which cuts pages with these sizes) because the server needs `result_text` for
every answer: a stdio `serve` imports this before it lists its tools, and render's sanitising and policy can
wait until the hub opens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson
import pydantic_core
from pydantic import BaseModel

# A result, or an item of one, built directly in the JSON shape its model dumps to (`model_dump(mode="json")`).
Shape = dict[str, Any]

# The size of an answer is what the client receives. A structured result is sent as its structured content and,
# again, as a text block holding the same JSON (`result_text`), itself a JSON string on the wire: each quote and
# backslash of it is escaped once more. Both count; they are measured with pydantic_core's encoder, which writes
# the same bytes as orjson's, the text block's (tests/test_read_shape.py holds them to it).


def result_text(structured: dict[str, Any]) -> str:
    """The text block a structured result is also sent as (DESIGN §3.1): the same JSON, compact. The SDK's own
    rendering indents it by two, which made every answer's text a third larger for the model to read, and cost a
    second encoding of the result on every call. orjson writes the very bytes pydantic_core writes for any
    JSON value, three times as fast: a page of 20 messages is 6 KB to encode on every read."""
    try:
        return orjson.dumps(structured).decode()
    except orjson.JSONEncodeError:  # an integer past 64 bits, which no result holds: pydantic_core takes any
        return pydantic_core.to_json(structured).decode()


def result_bytes(result: BaseModel | Shape) -> int:
    """The bytes `result` takes in a tool's answer: its structured content plus its text block, quoted."""
    rendered = pydantic_core.to_json(result)
    return len(rendered) + _escaped(rendered) + 2


def item_bytes(item: BaseModel | Shape) -> int:
    """What one item of a result's list adds to `result_bytes`: itself in both renderings, each with its comma."""
    rendered = pydantic_core.to_json(item)
    return len(rendered) + 1 + _escaped(rendered) + 1


def _escaped(rendered: bytes) -> int:
    """Bytes of `rendered` inside a JSON string: its quotes and backslashes are escaped, and nothing else needs
    escaping (the rendering already escaped every control character)."""
    return len(rendered) + rendered.count(b'"') + rendered.count(b"\\")


_ESCAPED = re.compile(r'[\x00-\x1f"\\]')
# A mention or similar short string in a list: its quotes, comma, newline and indentation in both renderings.
_LISTED_STRING_BYTES = 24
# The most one character of free text can add to an answer across both renderings: a control character is
# `\u0001` (6 bytes) in the structured content and `\\u0001` (7) in the text block; a quote is 2 then 4, and a
# character of 4 UTF-8 bytes is 4 then 4. So 13 bytes per character (not per byte) bounds every text.
CHAR_BYTES_MAX = 13


def text_hint(texts: Iterable[str]) -> int:
    """A cheap upper bound on what these strings (each its own list element or field value) add to an
    answer, without encoding them: a character is at most 2 bytes per UTF-8 byte across both renderings,
    except those JSON escapes (a quote: 2 then 4; a control character: 6 then 7)."""
    total = 0
    for t in texts:
        size = len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass"))
        total += 2 * size + 11 * len(_ESCAPED.findall(t)) + _LISTED_STRING_BYTES
    return total
