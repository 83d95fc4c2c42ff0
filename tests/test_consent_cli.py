"""`agent-rooms grant`, `agent-rooms consent` and `agent-rooms owner unverify` against a real home.

The owner decides at the CLI exactly as an agent holding `consent` does through MCP: the same finality,
payload binding and grant checks. Errors are `CODE: message` on stderr with exit 1, or `{"code", "message"}`
on stdout with `--json`; usage errors exit 2.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result

from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.content import parse_envelopes
from tests.conftest import World, build_world
from tests.tool_errors import error_detail


@pytest.fixture
def world(tmp_path: Path) -> World:
    """The conftest world, built synchronously: the CLI runs its own event loop."""
    return anyio.run(build_world, tmp_path / "home")


def ar(world: World, *args: str) -> Result:
    env = {"AGENT_ROOMS_HOME": str(world.settings.home)}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def ok_json(world: World, *args: str) -> Any:
    r = ar(world, *args, "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def fails(world: World, *args: str) -> str:
    """The code of a refused command, having checked its shape (exit 1, `CODE: message` on stderr) and
    that it changed nothing."""
    before = world.fingerprint()
    r = ar(world, *args)
    assert r.exit_code == 1, (r.stdout, r.stderr)
    match = re.fullmatch(r"([A-Z_]+): (.+)", r.stderr.strip(), re.DOTALL)
    assert match, r.stderr
    assert r.stdout == ""
    assert world.fingerprint() == before
    return match.group(1)


def fails_json(world: World, *args: str) -> str:
    before = world.fingerprint()
    r = ar(world, *args, "--json")
    assert r.exit_code == 1, (r.stdout, r.stderr)
    body = json.loads(r.stdout)
    assert set(body) == {"code", "message"} and body["message"]
    assert world.fingerprint() == before
    return str(body["code"])


def tool(world: World, agent: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """One MCP call through a real in-memory client; returns the structured result, error or not."""

    async def go() -> dict[str, Any]:
        async with world.client(agent) as c:
            r = await c.call_tool(name, args)
        if r.is_error:
            return error_detail(r)
        assert r.structured_content is not None
        return r.structured_content

    return anyio.run(go)


def trust(world: World) -> None:
    """bob lets alice's agents propose work to his, through the CLI."""
    ok_json(world, "owner", "verify", "alice", "--method", "video call")
    ok_json(world, "owner", "verify", "bob", "--method", "in person")
    ok_json(world, "grant", "add", "--from", "bob", "--to", "alice")


def propose(world: World, title: str = "review", assignee: str = "bob-claude") -> dict[str, Any]:
    task = tool(world, "alice-claude", "create_task", {"room": "shared", "title": title, "assignee": assignee})
    assert task["consent_state"] == "pending", task
    return task


def proposal_state(world: World, proposal_id: str) -> str:
    [row] = world.sql("SELECT state FROM proposals WHERE proposal_id = ?", (proposal_id,))
    return str(row["state"])


# --- grants ------------------------------------------------------------------------------------------


@pytest.mark.invariant(24)
def test_grant_add_needs_both_owners_verified(world: World) -> None:
    assert fails(world, "grant", "add", "--from", "bob", "--to", "alice") == "IDENTITY_UNVERIFIED"
    assert fails_json(world, "grant", "add", "--from", "bob", "--to", "alice") == "IDENTITY_UNVERIFIED"
    ok_json(world, "owner", "verify", "bob")
    assert fails(world, "grant", "add", "--from", "bob", "--to", "alice") == "IDENTITY_UNVERIFIED"
    assert world.sql("SELECT * FROM grants") == []
    ok_json(world, "owner", "verify", "alice")
    assert ok_json(world, "grant", "add", "--from", "bob", "--to", "alice")["active"] is True


def test_grant_add_list_and_revoke(world: World) -> None:
    ok_json(world, "owner", "verify", "alice")
    ok_json(world, "owner", "verify", "bob")
    made = ok_json(world, "grant", "add", "--from", "bob", "--to", "alice")
    assert set(made) == {"grant_id", "from_owner", "to_owner", "created_at", "revoked_at", "active"}
    assert (made["from_owner"], made["to_owner"], made["revoked_at"], made["active"]) == ("bob", "alice", None, True)
    assert made["grant_id"].startswith("grant_")

    assert fails(world, "grant", "add", "--from", "bob", "--to", "alice") == "CONFLICT"
    assert fails_json(world, "grant", "add", "--from", "bob", "--to", "alice") == "CONFLICT"
    assert fails(world, "grant", "add", "--from", "bob", "--to", "bob") == "INVALID_ARGUMENT"
    assert fails(world, "grant", "add", "--from", "bob", "--to", "zed") == "NOT_FOUND"
    assert ar(world, "grant", "add", "--from", "bob").exit_code == 2

    assert ok_json(world, "grant", "list") == {"grants": [made]}
    assert ok_json(world, "grant", "list", "--owner", "alice") == {"grants": [made]}
    assert ok_json(world, "grant", "list", "--owner", "carol") == {"grants": []}
    text = ar(world, "grant", "list").stdout.splitlines()
    assert text[0].split() == ["FROM", "TO", "CREATED", "REVOKED"]
    assert text[1].split()[:2] == ["bob", "alice"] and text[1].split()[-1] == "active"

    revoked = ok_json(world, "grant", "revoke", "--from", "bob", "--to", "alice")
    assert (revoked["grant_id"], revoked["active"]) == (made["grant_id"], False) and revoked["revoked_at"]
    assert ok_json(world, "grant", "list") == {"grants": []}
    assert ok_json(world, "grant", "list", "--all") == {"grants": [revoked]}
    assert fails(world, "grant", "revoke", "--from", "bob", "--to", "alice") == "NOT_FOUND"
    # A new grant after a revoked one is a new grant, not the old one revived.
    again = ok_json(world, "grant", "add", "--from", "bob", "--to", "alice")
    assert again["grant_id"] != made["grant_id"]

    rows = [r for r in world.audit_rows() if r["action"].startswith("grant.")]
    assert [r["action"] for r in rows] == ["grant.add", "grant.revoke", "grant.add"]
    assert {(r["actor_kind"], r["outcome"]) for r in rows} == {("operator", "ok")}


@pytest.mark.invariant(25)
def test_a_grant_revoked_at_the_cli_stops_acceptance_and_new_work(world: World) -> None:
    trust(world)
    task = propose(world)
    ok_json(world, "grant", "revoke", "--from", "bob", "--to", "alice")
    assert fails(world, "consent", "accept", task["proposal_id"], "--owner", "bob") == "NO_GRANT"
    refused = tool(world, "alice-claude", "create_task", {"room": "shared", "title": "x", "assignee": "bob-claude"})
    assert refused["code"] == "NO_GRANT"
    # Still listed, and still rejectable.
    [waiting] = ok_json(world, "consent", "list", "--owner", "bob")["proposals"]
    assert waiting["proposal_id"] == task["proposal_id"]
    done = ok_json(world, "consent", "reject", task["proposal_id"], "--owner", "bob", "--reason", "grant withdrawn")
    assert done["consent_state"] == "rejected"


# --- consent modes -----------------------------------------------------------------------------------


@pytest.mark.invariant(46)
def test_consent_mode_sets_the_owners_mode_in_one_room(world: World) -> None:
    trust(world)
    pending = propose(world, "before")
    done = ok_json(world, "consent", "mode", "shared", "approve_all", "--owner", "bob")
    assert set(done) == {"room", "room_id", "owner", "mode", "collaborator"}
    assert (done["room"], done["owner"], done["mode"], done["collaborator"]) == ("shared", "bob", "approve_all", None)
    assert done["room_id"].startswith("room_")
    assert tool(world, "bob-claude", "get_room", {"room": "shared"})["consent_mode"] == "approve_all"
    assert tool(world, "alice-claude", "get_room", {"room": "shared"})["consent_mode"] == "task_by_task"
    assert tool(world, "bob-claude", "get_room", {"room": "bobs-den"})["consent_mode"] == "task_by_task"
    [row] = [r for r in world.audit_rows() if r["action"] == "consent.mode"]
    assert (row["actor_kind"], row["outcome"], json.loads(row["detail"])["previous"]) == (
        "operator",
        "ok",
        "task_by_task",
    )
    # Future proposals only.
    assert proposal_state(world, pending["proposal_id"]) == "pending"
    later = tool(world, "alice-claude", "create_task", {"room": "shared", "title": "after", "assignee": "bob-claude"})
    assert later["consent_state"] == "accepted"

    text = ar(world, "consent", "mode", "shared", "trust_collaborator", "--owner", "bob", "--collaborator", "alice")
    assert (text.exit_code, text.stdout.strip()) == (0, "bob in shared: trust_collaborator (alice)")
    assert tool(world, "bob-claude", "get_room", {"room": "shared"})["consent_mode"] == "trust_collaborator"


def test_consent_mode_refuses_what_makes_no_sense(world: World) -> None:
    assert fails(world, "consent", "mode", "shared", "trust_collaborator", "--owner", "bob") == "INVALID_ARGUMENT"
    args = ("consent", "mode", "shared", "trust_collaborator", "--owner", "bob", "--collaborator", "bob")
    assert fails(world, *args) == "INVALID_ARGUMENT"
    args = ("consent", "mode", "shared", "approve_all", "--owner", "bob", "--collaborator", "alice")
    assert fails(world, *args) == "INVALID_ARGUMENT"
    # carol is not in the room: she has no mode to set there.
    assert fails(world, "consent", "mode", "shared", "approve_all", "--owner", "carol") == "INVALID_ARGUMENT"
    assert fails(world, "consent", "mode", "no-such-room", "approve_all", "--owner", "bob") == "NOT_FOUND"
    assert fails(world, "consent", "mode", "shared", "approve_all", "--owner", "zed") == "NOT_FOUND"
    assert fails_json(world, "consent", "mode", "shared", "trust_collaborator", "--owner", "bob") == "INVALID_ARGUMENT"
    assert ar(world, "consent", "mode", "shared", "approve_everything", "--owner", "bob").exit_code == 2
    assert ar(world, "consent", "mode", "shared", "approve_all").exit_code == 2
    assert world.sql("SELECT * FROM consent_modes") == []


# --- listing and deciding ----------------------------------------------------------------------------


def test_consent_list_shows_what_waits_with_the_words_enveloped(world: World) -> None:
    trust(world)
    task = propose(world, "port the parser")
    posted = tool(world, "alice-claude", "post_message", {"room": "shared", "text": "@bob-codex wake up"})
    wake_id = posted["mentions"][0]["proposal_id"]

    listing = ok_json(world, "consent", "list", "--owner", "bob")
    assert set(listing) == {"proposals", "next_after", "has_more", "boundary", "notice"}
    assert listing["has_more"] is False and listing["boundary"]
    by_id = {p["proposal_id"]: p for p in listing["proposals"]}
    assert set(by_id) == {task["proposal_id"], wake_id}
    offered = by_id[task["proposal_id"]]
    assert set(offered) == {
        "proposal_id",
        "kind",
        "room",
        "room_id",
        "proposer",
        "target",
        "task_id",
        "causers",
        "payload",
        "payload_sha256",
        "created_at",
    }
    assert (offered["kind"], offered["target"], offered["task_id"]) == ("task", "bob-claude", task["task_id"])
    assert offered["proposer"] == {"agent": "alice-claude", "owner": "alice"}
    assert parse_envelopes(offered["payload"]["title"], listing["boundary"]) == ["port the parser"]
    assert parse_envelopes(by_id[wake_id]["payload"]["text"], listing["boundary"]) == ["@bob-codex wake up"]
    assert by_id[wake_id]["kind"] == "wake"

    text = ar(world, "consent", "list", "--owner", "bob").stdout
    assert (
        f"{task['proposal_id']}  task (task {task['task_id']}) for bob-claude in shared from alice-claude (alice)"
        in text
    )
    assert f"{wake_id}  wake for bob-codex in shared" in text
    assert "port the parser" in text
    assert "    words of: alice\n" in text  # every owner whose words the request carries (invariant 78)
    assert ar(world, "consent", "list", "--owner", "alice").stdout.strip() == "(nothing waits on your decision)"
    assert ok_json(world, "consent", "list", "--owner", "bob", "--room", "bobs-den")["proposals"] == []
    # A room bob is not in is one he cannot name.
    assert fails(world, "consent", "list", "--owner", "bob", "--room", "lobby") == "NOT_FOUND"
    assert fails(world, "consent", "list", "--owner", "zed") == "NOT_FOUND"
    assert ar(world, "consent", "list").exit_code == 2


def test_consent_list_shows_a_person_plain_words_and_json_keeps_the_envelopes(world: World) -> None:
    """The envelope marks another owner's words for a model; a person reading the list gets the words, each
    further line indented under its field, so a line in them cannot pass for one of the list's own."""
    trust(world)
    body = "step one\nprop_FAKEFAKEFAKEFAKEFAKEFA  task for bob-claude in shared from bob-claude (bob)"
    task = tool(world, "alice-claude", "create_task", {"room": "shared", "title": "port it", "assignee": "bob-claude"})
    tool(world, "alice-claude", "update_task", {"task": task["task_id"], "body": body})
    listing = ok_json(world, "consent", "list", "--owner", "bob")
    [offered] = [p for p in listing["proposals"] if p["task_id"] == task["task_id"]]
    assert parse_envelopes(offered["payload"]["body"], listing["boundary"]) == [body]  # machine form unchanged

    text = ar(world, "consent", "list", "--owner", "bob").stdout
    assert "<<untrusted" not in text and listing["boundary"] not in text
    assert "    title: port it\n" in text
    assert "    body: step one\n      | prop_FAKEFAKEFAKEFAKEFAKEFA  task for bob-claude" in text
    assert not any(line.startswith("prop_FAKE") for line in text.splitlines())


def test_consent_list_pages_through_and_says_when_more_wait(world: World) -> None:
    """Issue 12: the list once printed its first page only. Each page now says when more wait and names the
    --after that shows the next one; following it shows every request exactly once."""
    trust(world)
    made = [propose(world, f"job {n}")["proposal_id"] for n in range(5)]
    small = {"AGENT_ROOMS_HOME": str(world.settings.home), "AGENT_ROOMS_LIMIT_PAGE_MAX": "2"}

    def page(*args: str) -> Result:
        r = CliRunner().invoke(cli, ["consent", "list", "--owner", "bob", *args], env=small, catch_exceptions=False)
        assert r.exit_code == 0, (r.stdout, r.stderr)
        return r

    seen: list[str] = []
    after: list[str] = []
    for _ in range(len(made)):
        text = page(*after).stdout
        seen += re.findall(r"^(prop_\S+)  task", text, re.MULTILINE)
        more = re.search(r"\(more wait: agent-rooms consent list --owner bob --after (\d+)\)$", text.strip())
        if more is None:
            break
        after = ["--after", more.group(1)]
    assert seen == made
    assert page(*after, "--json").stdout and json.loads(page(*after, "--json").stdout)["has_more"] is False
    first = json.loads(page("--json").stdout)
    assert (len(first["proposals"]), first["has_more"]) == (2, True)
    assert page("--after", "999999").stdout.strip() == "(nothing more waits on your decision)"
    assert ar(world, "consent", "list", "--owner", "bob", "--after", "-1").exit_code == 2


@pytest.mark.invariant(43, 44)
def test_consent_accept_and_reject_at_the_cli_are_final(world: World) -> None:
    trust(world)
    kept, dropped, by_task = propose(world, "kept"), propose(world, "dropped"), propose(world, "by task id")

    accepted = ok_json(world, "consent", "accept", kept["proposal_id"], "--owner", "bob")
    assert accepted == {
        "proposal_id": kept["proposal_id"],
        "kind": "task",
        "task_id": kept["task_id"],
        "consent_state": "accepted",
    }
    [row] = world.sql("SELECT * FROM proposals WHERE proposal_id = ?", (kept["proposal_id"],))
    assert (row["state"], row["decided_via"]) == ("accepted", "cli")
    [audit] = [r for r in world.audit_rows() if r["action"] == "consent.accept"]
    assert (audit["actor_kind"], audit["outcome"]) == ("operator", "ok")

    text = ar(world, "consent", "reject", dropped["proposal_id"], "--owner", "bob", "--reason", "not this week")
    assert (text.exit_code, text.stdout.strip()) == (0, f"{dropped['proposal_id']}: rejected")
    assert (
        ok_json(world, "consent", "accept", by_task["task_id"], "--owner", "bob")["proposal_id"]
        == (by_task["proposal_id"])
    )

    for ref in (kept["proposal_id"], dropped["proposal_id"], by_task["task_id"]):
        assert fails(world, "consent", "accept", ref, "--owner", "bob") == "CONFLICT"
        assert fails(world, "consent", "reject", ref, "--owner", "bob", "--reason", "again") == "CONFLICT"
        assert fails_json(world, "consent", "accept", ref, "--owner", "bob") == "CONFLICT"
    # Nor may an agent overturn the owner's decision.
    assert tool(world, "bob-admin", "accept_task", {"task": dropped["proposal_id"]})["code"] == "CONFLICT"
    assert ar(world, "consent", "reject", kept["proposal_id"], "--owner", "bob").exit_code == 2  # --reason needed

    # The assignee works on what its owner accepted; the proposer reads the owner's reason, enveloped.
    moved = tool(world, "bob-claude", "update_task", {"task": kept["task_id"], "status": "in_progress"})
    assert moved["status"] == "in_progress"
    closed = tool(world, "bob-claude", "update_task", {"task": dropped["task_id"], "status": "done"})
    assert closed["code"] == "CONFLICT"
    board = tool(world, "alice-claude", "list_tasks", {"room": "shared", "consent_state": "rejected"})
    [seen] = board["tasks"]
    assert seen["task_id"] == dropped["task_id"]
    assert parse_envelopes(seen["consent_reason"], board["boundary"]) == ["not this week"]


@pytest.mark.invariant(43)
def test_consent_accept_by_the_wrong_owner_is_refused(world: World) -> None:
    trust(world)
    task = propose(world)
    for ref in (task["proposal_id"], task["task_id"]):
        # alice is in the room and can see the proposal, but it is not hers to decide.
        assert fails(world, "consent", "accept", ref, "--owner", "alice") == "FORBIDDEN_SCOPE"
        assert fails(world, "consent", "reject", ref, "--owner", "alice", "--reason", "x") == "FORBIDDEN_SCOPE"
        assert fails_json(world, "consent", "accept", ref, "--owner", "alice") == "FORBIDDEN_SCOPE"
        # carol is in no room with it: to her it does not exist.
        assert fails(world, "consent", "accept", ref, "--owner", "carol") == "NOT_FOUND"
        assert fails_json(world, "consent", "reject", ref, "--owner", "carol", "--reason", "x") == "NOT_FOUND"
    assert fails(world, "consent", "accept", task["proposal_id"], "--owner", "zed") == "NOT_FOUND"
    assert fails(world, "consent", "accept", "prop_" + "A" * 22, "--owner", "bob") == "NOT_FOUND"
    assert fails(world, "consent", "accept", "task_" + "A" * 22, "--owner", "bob") == "NOT_FOUND"
    assert ar(world, "consent", "accept", task["proposal_id"]).exit_code == 2  # --owner is required
    assert proposal_state(world, task["proposal_id"]) == "pending"


@pytest.mark.invariant(45)
def test_the_cli_decides_only_the_words_it_was_shown(world: World) -> None:
    trust(world)
    task = propose(world, "first words")
    [shown] = ok_json(world, "consent", "list", "--owner", "bob")["proposals"]
    edited = tool(world, "alice-claude", "update_task", {"task": task["task_id"], "title": "other words"})
    assert fails(world, "consent", "accept", shown["proposal_id"], "--owner", "bob") == "CONFLICT"
    [now] = ok_json(world, "consent", "list", "--owner", "bob")["proposals"]
    assert now["proposal_id"] == edited["proposal_id"] != shown["proposal_id"]
    assert now["payload_sha256"] != shown["payload_sha256"]
    # A task id would name whatever the task asks now: once it changed, only the reviewed proposal id is taken.
    assert fails(world, "consent", "accept", task["task_id"], "--owner", "bob") == "CONFLICT"
    assert ok_json(world, "consent", "accept", now["proposal_id"], "--owner", "bob")["consent_state"] == "accepted"


# --- owner unverify ----------------------------------------------------------------------------------


@pytest.mark.invariant(24)
def test_owner_unverify_stops_cross_owner_work(world: World) -> None:
    trust(world)
    task, other = propose(world, "one"), propose(world, "two")
    done = ok_json(world, "owner", "unverify", "alice")
    assert (done["handle"], done["verified"], done["verified_at"], done["verified_method"]) == (
        "alice",
        False,
        None,
        None,
    )
    owners = {o["handle"]: o["verified"] for o in ok_json(world, "owner", "list")["owners"]}
    assert owners == {"alice": False, "bob": True, "carol": False}
    [row] = [r for r in world.audit_rows() if r["action"] == "owner.unverify"]
    assert (row["actor_kind"], row["outcome"]) == ("operator", "ok")

    assert fails(world, "consent", "accept", task["proposal_id"], "--owner", "bob") == "IDENTITY_UNVERIFIED"
    refused = tool(world, "alice-claude", "create_task", {"room": "shared", "title": "x", "assignee": "bob-claude"})
    assert refused["code"] == "IDENTITY_UNVERIFIED"
    assert tool(world, "bob-admin", "accept_task", {"task": other["proposal_id"]})["code"] == "IDENTITY_UNVERIFIED"
    rejected = ok_json(world, "consent", "reject", other["proposal_id"], "--owner", "bob", "--reason", "who is this?")
    assert rejected["consent_state"] == "rejected"
    # The grant outlives the verification: verified again, the waiting proposal can be accepted.
    assert ok_json(world, "grant", "list")["grants"][0]["active"] is True
    ok_json(world, "owner", "verify", "alice")
    assert ok_json(world, "consent", "accept", task["proposal_id"], "--owner", "bob")["consent_state"] == "accepted"

    text = ar(world, "owner", "unverify", "bob")
    assert (text.exit_code, text.stdout.strip()) == (0, "bob is no longer verified")
    assert fails(world, "owner", "unverify", "zed") == "NOT_FOUND"


def test_help_lists_the_grant_and_consent_commands(world: World) -> None:
    top = ar(world, "--help").stdout
    assert "grant" in top and "consent" in top
    assert {"add", "revoke", "list"} <= set(re.findall(r"^\s+(\w+)\s", ar(world, "grant", "--help").stdout, re.M))
    consent_help = ar(world, "consent", "--help").stdout
    assert {"mode", "list", "accept", "reject"} <= set(re.findall(r"^\s+(\w+)\s", consent_help, re.M))
    assert "unverify" in ar(world, "owner", "--help").stdout


def test_refused_cli_actions_are_audited_and_reasons_are_checked(world: World) -> None:
    trust(world)
    task = propose(world, "words")
    before = len(world.audit_rows())
    assert fails(world, "consent", "accept", task["proposal_id"], "--owner", "alice") == "FORBIDDEN_SCOPE"
    assert fails(world, "consent", "reject", task["proposal_id"], "--owner", "bob", "--reason", "") == (
        "INVALID_ARGUMENT"
    )
    assert fails(world, "consent", "reject", task["proposal_id"], "--owner", "bob", "--reason", "x" * 2001) == (
        "TOO_LARGE"
    )
    denials = world.audit_rows()[before:]
    assert [(d["action"], d["outcome"], d["actor_kind"]) for d in denials] == [
        ("cli.consent.accept", "denied", "operator"),
        ("cli.consent.reject", "denied", "operator"),
        ("cli.consent.reject", "denied", "operator"),
    ]
