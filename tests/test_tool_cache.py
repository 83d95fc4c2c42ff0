"""The tools' schemas cached beside the .pyc files (tool_cache.py): a hub started from the cache lists and answers
exactly what one that built its tools live does, and a cache is read only while nothing it was built from changed.

Real `python -m agent_rooms_mcp serve` processes, their bytecode and the cache written under a PYTHONPYCACHEPREFIX of
the test's own; the cache's functions on files of the test's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_rooms_mcp import models, run_states, server, settings
from agent_rooms_mcp.home import write_private_file
from agent_rooms_mcp.server import TOOLS, ListedTool, build_tool
from agent_rooms_mcp.tool_cache import Schemas, load, save
from tests.conftest import World
from tests.test_stdio_start import HELLO, LIST, READY, REPO, STUCK_S, _answer, _send

CALLS: list[tuple[str, dict[str, Any]]] = [
    ("whoami", {}),
    ("list_rooms", {}),
    ("get_room", {"room": "no-such-room"}),  # refused by the service
    ("read_messages", {"room": "lobby", "limit": 0}),  # refused by the argument model
    ("create_task", {"room": "lobby", "title": "t", "body": 7}),  # refused by the argument model
]


def _session(world: World, pycache: Path, log: Path) -> list[dict[str, Any]]:
    """One start: the tool list, then CALLS, as the client reads them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_ROOMS_") and k != "PYTHONDONTWRITEBYTECODE"}
    token = world.settings.tokens_dir / "agent.token"
    write_private_file(token, world.tokens["alice-claude"].encode("ascii"))
    env.update(AGENT_ROOMS_HOME=str(world.settings.home), AGENT_ROOMS_TOKEN_FILE=str(token))
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    argv = [sys.executable, "-m", "agent_rooms_mcp", "serve"]
    with (
        log.open("ab") as errlog,
        subprocess.Popen(argv, env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog) as p,
    ):
        try:
            _send(p.stdin, HELLO, READY, LIST)
            answers = [_answer(p.stdout, 1)["result"]["serverInfo"], _answer(p.stdout, LIST["id"])]
            for i, (name, arguments) in enumerate(CALLS, start=100):
                _send(
                    p.stdin,
                    {
                        "jsonrpc": "2.0",
                        "id": i,
                        "method": "tools/call",
                        "params": {"name": name, "arguments": arguments},
                    },
                )
                answers.append(_answer(p.stdout, i))
        finally:
            assert p.stdin is not None
            p.stdin.close()
            p.wait(STUCK_S)
    return answers


async def test_a_hub_started_from_the_cache_lists_and_answers_as_one_that_built_its_tools(
    world: World, tmp_path: Path
) -> None:
    pycache = tmp_path / "pycache"
    live = _session(world, pycache, tmp_path / "stderr.log")
    [cache] = pycache.rglob("tool-schemas.json")  # written by the start that built its tools
    written = cache.stat().st_mtime_ns
    cached = _session(world, pycache, tmp_path / "stderr.log")
    assert cache.stat().st_mtime_ns == written  # the second start read it: a live build would have written it again
    assert cached == live
    listed = live[1]["result"]["tools"]
    assert [t["name"] for t in listed] == [fn.__name__ for fn, _ in TOOLS]
    whoami, _, no_room, bad_limit, bad_body = live[2:]
    assert whoami["result"]["structuredContent"]["agent"]["handle"] == "alice-claude"
    assert no_room["result"]["content"][0]["text"].startswith("NOT_FOUND")
    assert bad_limit["result"]["content"][0]["text"].startswith("INVALID_ARGUMENT: limit")
    assert bad_body["result"]["content"][0]["text"].startswith("INVALID_ARGUMENT: body")


@pytest.mark.parametrize("tool", [fn for fn, _ in TOOLS], ids=lambda fn: fn.__name__)
def test_a_listed_tool_shows_and_completes_into_the_tool_a_live_build_makes(tool: Any) -> None:
    hints = dict(TOOLS)[tool]
    live = build_tool(tool, hints)
    listed = ListedTool.listed(tool, hints, Schemas(live.parameters, live.output_schema))
    shown = ("name", "title", "description", "parameters", "output_schema", "annotations", "icons", "meta")
    assert {k: getattr(listed, k) for k in shown} == {k: getattr(live, k) for k in shown}
    assert "fn_metadata" not in listed.__dict__  # built at the first call, not before
    metadata = listed.fn_metadata
    assert type(metadata) is type(live.fn_metadata)
    assert metadata.arg_model.model_json_schema() == live.fn_metadata.arg_model.model_json_schema()
    assert (metadata.output_model, metadata.output_schema, metadata.wrap_output) == (
        live.fn_metadata.output_model,
        live.fn_metadata.output_schema,
        live.fn_metadata.wrap_output,
    )
    fields = set(type(live).model_fields) - {"fn", "fn_metadata"}
    assert {k: getattr(listed, k) for k in fields} == {k: getattr(live, k) for k in fields}


def test_the_cache_is_read_only_while_nothing_it_was_built_from_has_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = tmp_path / "tool-schemas.json"
    schemas = {"whoami": Schemas({"type": "object", "properties": {}}, {"type": "object"})}
    save(schemas, path)
    assert load(path) == schemas
    document = json.loads(path.read_text())
    # The modules the schemas are built from are stamped (with every other module of ours loaded).
    assert {m.__file__ for m in (server, models, settings, run_states)} <= set(document["sources"])

    def doctored(change: Any) -> dict[str, Schemas] | None:
        copy = json.loads(json.dumps(document))
        change(copy)
        path.write_text(json.dumps(copy))
        return load(path)

    def edited(d: dict[str, Any]) -> None:
        d["sources"][models.__file__][0] += 1

    def resized(d: dict[str, Any]) -> None:
        d["sources"][server.__file__][1] += 1

    def removed(d: dict[str, Any]) -> None:
        d["sources"][str(tmp_path / "gone.py")] = [0, 0]

    def upgraded(d: dict[str, Any]) -> None:
        d["versions"][1] = "0.0.0"

    for change in (edited, resized, removed, upgraded):
        assert doctored(change) is None, change.__name__
    path.write_text("{")
    assert load(path) is None
    assert load(tmp_path / "none.json") is None


def test_no_cache_is_written_where_bytecode_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    save({"whoami": Schemas({"type": "object"}, None)}, tmp_path / "tool-schemas.json")
    assert not (tmp_path / "tool-schemas.json").exists()


def test_a_served_hub_builds_every_model_before_it_serves() -> None:
    """Models build at first use for a stdio start's sake; `serve --http` builds them all first (`build_all`), so
    no call, and no periodic task's first run, pays for a build while it serves. In a fresh process: in this one,
    earlier tests may have built them already."""
    check = (
        "from pydantic._internal._mock_val_ser import MockValSer\n"
        "from agent_rooms_mcp import models\n"
        "def every(m): return [m, *(s for c in m.__subclasses__() for s in every(c))]\n"
        "deferred = [m.__name__ for m in every(models.Model)[1:] if isinstance(m.__pydantic_validator__, MockValSer)]\n"
        "assert deferred, 'nothing was deferred: this test proves nothing'\n"
        "models.build_all()\n"
        "print([m.__name__ for m in every(models.Model)[1:] if isinstance(m.__pydantic_validator__, MockValSer)])\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
