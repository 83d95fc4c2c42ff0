"""read_messages builds its answer directly in the JSON shape `MessagePage` dumps to, without building the models:
these tests hold that shape to the model, byte for byte, over hostile text from every kind of writer."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
import orjson
import pydantic_core
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_rooms_mcp.auth.tokens import MCP_KINDS
from agent_rooms_mcp.models import MessagePage
from agent_rooms_mcp.results import result_text
from tests.conftest import World, build_world

# What sanitising and the envelopes act on, and what JSON escapes, among ordinary and astral text.
HOSTILE = '"\\/\r\n\t\x00\x01\x1b[31m\x7f\x85\u2028\u2029\u202e\u200b\u00ad\ufeff\U000e0041\U0001d173\ufff9é字😀<>&@'
texts = st.text(alphabet=st.sampled_from(HOSTILE) | st.characters(codec="utf-8"), max_size=60)
# Each message: its text, who writes it (alice's agents and bob's, so every relation and the envelopes
# occur), and whether it mentions an agent (its outcome then settles into the page).
messages = st.lists(
    st.tuples(
        texts,
        st.sampled_from(["alice-claude", "alice-admin", "bob-claude"]),
        st.sampled_from([[], ["bob-codex"], ["alice-claude", "nobody"]]),
    ),
    min_size=1,
    max_size=5,
)


def assert_shaped_as_the_model(structured: dict[str, Any]) -> None:
    """`structured` is exactly what `MessagePage` dumps for the same values: every field, in the model's order,
    and nothing more (an extra key, a missing default, a coerced type or another order changes the bytes)."""
    as_model = MessagePage.model_validate(structured)
    assert pydantic_core.to_json(structured) == as_model.model_dump_json().encode()


@pytest.fixture(scope="module")
def shared_world() -> World:
    """One world for every example (each reads only the messages it posted): building one per example would
    cost the suite seconds."""
    home = Path(tempfile.mkdtemp(prefix="read-shape-")) / "home"
    return anyio.run(build_world, home)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(page=messages, reply=st.booleans())
def test_a_page_of_hostile_text_is_shaped_as_its_model(shared_world: World, page: list[Any], reply: bool) -> None:
    async def post_and_read() -> None:
        async with shared_world.hub() as hub:
            tokens = shared_world.tokens
            callers = {a: await hub.auth.authenticate(tokens[a], MCP_KINDS, transport="test") for a in tokens}
            first = None
            for text, writer, mentions in page:
                posted = await hub.messages.post(callers[writer], "shared", text, mentions, first if reply else None)
                first = first or posted.seq
            assert first is not None
            for reader in ("alice-claude", "bob-claude"):  # bob reads alice's agents' text enveloped, and alice his
                for after, limit in ((first - 1, 50), (first, 2), (first + len(page), 50)):
                    read = await hub.messages.read(callers[reader], "shared", after, limit)
                    assert_shaped_as_the_model(read.structured)

    anyio.run(post_and_read)


async def test_read_messages_sends_its_shape_and_that_again_as_its_text(world: World, transport: str) -> None:
    """Over every transport: the structured content is the model's shape, and the text block its compact JSON;
    the empty page of a long poll that times out too."""
    async with world.client("bob-claude") as bob:
        await bob.call_tool("post_message", {"room": "shared", "text": 'hi "alice" \x1b[2J\u202e @alice-claude'})
    async with world.session("alice-claude", transport, "auto") as alice:
        await alice.call_tool("post_message", {"room": "shared", "text": "mine, é字😀", "mentions": ["bob-codex"]})
        for tool, args in (
            ("read_messages", {"room": "shared"}),
            ("read_messages", {"room": "shared", "after": 1, "limit": 1}),
            ("read_messages", {"room": "shared", "after": 2}),
            ("wait_for_messages", {"room": "shared", "after": 2, "timeout_s": 1}),
        ):
            r = await alice.call_tool(tool, args)
            assert not r.is_error, r.content
            assert r.structured_content is not None
            assert_shaped_as_the_model(r.structured_content)
            assert [block.text for block in r.content if block.type == "text"] == [result_text(r.structured_content)]
    assert len(r.structured_content["messages"]) == 0  # the timed-out long poll


# Every JSON value a result can hold, and more: floats, 64-bit integers, any text as values and keys.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
    | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


def test_the_text_block_encoder_writes_every_character_as_pydantic_core_does() -> None:
    """result_text uses orjson, the byte bounds pydantic_core: each escapes a character on its own, so every
    character the same is every text the same."""
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert orjson.dumps(every) == pydantic_core.to_json(every)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_the_text_block_is_pydantic_cores_json_of_any_value(value: Any) -> None:
    assert result_text({"value": value}).encode() == pydantic_core.to_json({"value": value})


def test_the_text_block_of_an_integer_past_64_bits_is_still_written() -> None:
    assert result_text({"n": 2**70}) == '{"n":1180591620717411303424}'
