"""A stdio line that is not a JSON-RPC message is answered, with `id: null` as JSON-RPC 2.0 says, and the server
keeps serving: the SDK's reader would drop it without an answer, and the client (or a person typing into
`agent-rooms serve`) would wait for ever. The codes are those the SDK's HTTP transport sends for such a body.

Real `python -m agent_rooms_mcp serve` processes over their pipes, as tests/test_stdio_start.py drives them."""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp.types import INVALID_REQUEST, PARSE_ERROR

from agent_rooms_mcp import unreadable
from agent_rooms_mcp.home import write_private_file
from tests.conftest import World
from tests.test_stdio_start import ALICE, HELLO, READY, REPO, STUCK_S

WHOAMI = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
LINE_CAP = 4096  # set small, so the line over it is cheap


def _serve(world: World, tmp_path: Path, lines: list[bytes], **limits: str) -> tuple[list[dict[str, Any]], str]:
    """Every line written at once, then stdin closed: the answers in the order written, and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_ROOMS_")} | limits
    env["AGENT_ROOMS_HOME"] = str(world.settings.home)
    token_file = world.settings.tokens_dir / "agent.token"
    write_private_file(token_file, world.tokens[ALICE].encode("ascii"))
    env["AGENT_ROOMS_TOKEN_FILE"] = str(token_file)
    argv = [sys.executable, "-m", "agent_rooms_mcp", "serve"]
    errlog = tmp_path / "stderr.log"
    with errlog.open("wb") as err, subprocess.Popen(argv, env=env, cwd=REPO, stdin=subprocess.PIPE,
                                                    stdout=subprocess.PIPE, stderr=err) as proc:  # fmt: skip
        out, _ = proc.communicate(b"".join(line + b"\n" for line in lines), timeout=STUCK_S)
    return [json.loads(line) for line in out.splitlines() if line.strip()], errlog.read_text()


def _json(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def _whoami_worked(answers: list[dict[str, Any]]) -> bool:
    called = [a for a in answers if a.get("id") == 2]
    return len(called) == 1 and called[0]["result"]["structuredContent"]["agent"]["handle"] == ALICE


async def test_lines_that_are_not_messages_are_answered_with_id_null_and_the_server_keeps_serving(
    world: World, tmp_path: Path
) -> None:
    secret = "art_not_a_real_token_but_looks_like_one"
    lines = [
        f"hello {secret}".encode(),  # line 1: not JSON
        b"",  # line 2: an empty line, which is nothing sent, and is passed over
        b"[1,2]",  # line 3: a batch
        b'{"a":1}',  # line 4: an object, not a message
        f'{{"jsonrpc": "2.0", "id": 5, "method": 7, "params": "{secret}"}}'.encode(),  # line 5: a bad envelope
        _json(HELLO),
        _json(READY),
        _json(WHOAMI),
    ]
    answers, stderr = _serve(world, tmp_path, lines)
    refused = [a for a in answers if a.get("id") is None]
    assert [(a["error"]["code"], a["error"]["message"].split(":")[0]) for a in refused] == [
        (PARSE_ERROR, "Parse error"),
        (INVALID_REQUEST, "Invalid Request"),
        (INVALID_REQUEST, "Invalid Request"),
        (INVALID_REQUEST, "Invalid Request"),
    ]
    assert all("id" in a for a in refused)  # `"id": null` on the wire, not left out
    assert [f"line {n} " in a["error"]["message"] for n, a in zip((1, 3, 4, 5), refused, strict=True)] == [True] * 4
    assert "array" in refused[1]["error"]["message"]
    assert _whoami_worked(answers), answers
    # The line is never echoed, neither to the client nor into the log; the log names each line once.
    assert secret not in json.dumps(answers) and secret not in stderr and "hello" not in stderr
    assert [json.loads(r)["line"] for r in stderr.splitlines() if "stdio.unreadable_line" in r] == [1, 3, 4, 5]


@pytest.mark.invariant(66)
async def test_an_over_long_line_without_a_request_id_is_answered_naming_the_cap(world: World, tmp_path: Path) -> None:
    """The cap's stand-in had no id to carry, and the SDK dropped it; it is answered with id null, as a request's
    stand-in is with its id (tests/test_integrity.py), with the code and text the bridge answers it with."""
    lines = [_json(HELLO), _json(READY), b"y" * (LINE_CAP + 1), _json(WHOAMI)]
    answers, stderr = _serve(world, tmp_path, lines, AGENT_ROOMS_LIMIT_STDIO_LINE_BYTES=str(LINE_CAP))
    refused = [a for a in answers if a.get("id") is None]
    assert [a["error"] for a in refused] == [
        {"code": INVALID_REQUEST, "message": f"TOO_LARGE: a message line is at most {LINE_CAP} bytes"}
    ]
    assert _whoami_worked(answers), answers
    assert stderr.count("stdio.line_too_large") == 1 and "stdio.unreadable_line" not in stderr


def test_the_answers_doctests() -> None:
    assert doctest.testmod(unreadable).failed == 0
