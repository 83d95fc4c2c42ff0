"""Two owners: Alice's agent offers work to Bob's agent, and nothing starts until Bob's policy says so.

Run from the repository: `.venv/bin/python examples/two_owners.py`. It sets everything up with the
`agent-rooms` CLI in a fresh temporary home of its own (your own hub is never touched): the operator
verifies Alice and Bob, Bob grants Alice, Bob joins Alice's room through an invite he accepts at his own
terminal, and then each agent works through its own stdio MCP session. It prints each step and ends
with the audit log that recorded them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from agent_rooms_mcp.content import parse_envelopes

HOME = Path(tempfile.mkdtemp(prefix="agent-rooms-demo-")) / "hub"
ENV = {**os.environ, "AGENT_ROOMS_HOME": str(HOME)}
ROOM = "design"
# What the audit log shows at the end: the human decisions and the agents' moves.
# Task ids -> "task#N", filled in as the tasks are made, to name them in the audit listing.
LABELS: dict[str, str] = {}
SHOWN = ("owner.verify", "grant.add", "invite.accept", "task.create", "task.update", "consent.mode", "consent.accept")


def agent_rooms(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent_rooms_mcp", *args]


def cli(*args: str) -> Any:
    """One human action at the terminal, as `agent-rooms ... --json`."""
    out = subprocess.run(agent_rooms(*args, "--json"), env=ENV, check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else {}


def setup() -> None:
    subprocess.run(agent_rooms("init"), env=ENV, check=True, capture_output=True)
    for owner in ("alice", "bob"):
        cli("owner", "add", owner)
        cli("owner", "verify", owner, "--method", "video call")
    granted = cli("grant", "add", "--from", "bob", "--to", "alice")
    print(f"1. the operator verified alice and bob; {granted['from_owner']} grants {granted['to_owner']}")
    # bob-desk is Bob's own agent that may decide for him (`consent`); it works outside the room.
    for agent, owner, tool, scopes in (
        ("alice-claude", "alice", "claude", "read,post,task"),
        ("bob-codex", "bob", "codex", "read,post,task"),
        ("bob-desk", "bob", "claude", "read,consent"),
    ):
        cli("agent", "add", agent, "--owner", owner, "--tool", tool, "--scopes", scopes)
        # The token goes straight into a 0600 file, as `agent-rooms connect` does.
        token = cli("token", "issue", agent)["token"]
        fd = os.open(HOME / "tokens" / f"{agent}.token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, token.encode())
        os.close(fd)
    cli("room", "create", ROOM, "--owner", "alice", "--agent", "alice-claude")
    code = cli("invite", "create", ROOM, "--by", "alice", "--ttl", "1h")["code"]
    joined = cli("invite", "accept", code, "--owner", "bob", "--agent", "bob-codex")
    print(f"2. {joined['owner']} accepted alice's invite at his terminal: {ROOM} has alice-claude and bob-codex")


def session(agent: str) -> Client:
    env = {**ENV, "AGENT_ROOMS_TOKEN_FILE": str(HOME / "tokens" / f"{agent}.token")}
    return Client(StdioServerParameters(command=sys.executable, args=["-m", "agent_rooms_mcp", "serve"], env=env))


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    if result.is_error:
        raise SystemExit(f"{tool} failed: {result.content[0].text}")
    assert result.structured_content is not None
    return result.structured_content


async def refusal(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    if not result.is_error:
        raise SystemExit(f"{tool} should have been refused")
    return str(result.content[0].text)


async def work() -> None:
    async with session("alice-claude") as alice, session("bob-codex") as bob, session("bob-desk") as desk:
        first = await call(
            alice,
            "create_task",
            {
                "room": ROOM,
                "title": "Review the migration",
                "body": "Check the lock order in 0002_tasks.sql.",
                "assignee": "bob-codex",
            },
        )
        LABELS[first["task_id"]] = f"task#{first['number']}"
        print(
            f"3. alice-claude proposed task #{first['number']} to bob-codex: consent_state={first['consent_state']}"
            f" ({first['proposal_id']})"
        )
        refused = await refusal(bob, "update_task", {"task": first["task_id"], "status": "in_progress"})
        print(f"4. bob-codex tried to start it: {refused}")
        mode = (await call(bob, "get_room", {"room": ROOM}))["consent_mode"]
        print(f"5. bob's consent mode in {ROOM} is {mode}: task #{first['number']} waits for bob")

        chosen = cli("consent", "mode", ROOM, "trust_collaborator", "--owner", "bob", "--collaborator", "alice")
        print(f"6. bob at his terminal: consent mode {chosen['mode']} ({chosen['collaborator']}) in {chosen['room']}")
        second = await call(
            alice, "create_task", {"room": ROOM, "title": "Write the rollback note", "assignee": "bob-codex"}
        )
        LABELS[second["task_id"]] = f"task#{second['number']}"
        started = await call(bob, "update_task", {"task": second["task_id"], "status": "in_progress"})
        still = await call(alice, "list_tasks", {"room": ROOM, "consent_state": "pending"})
        print(
            f"7. task #{second['number']} started {second['consent_state']}; bob-codex moved it to"
            f" {started['status']}; #{first['number']} is still {still['tasks'][0]['consent_state']}"
            " (a mode applies to new requests only)"
        )

        pending = await call(desk, "list_pending_consents", {})
        [offer] = pending["proposals"]
        [title] = parse_envelopes(offer["payload"]["title"], pending["boundary"])
        decided = await call(desk, "accept_task", {"task": offer["proposal_id"]})
        print(
            f"8. bob-desk (bob's agent holding consent) reviewed {offer['kind']} {title!r}"
            f" from {offer['proposer']['agent']} ({offer['proposer']['owner']}): {decided['consent_state']}"
        )

        await call(bob, "update_task", {"task": first["task_id"], "status": "in_progress"})
        done = await call(
            bob,
            "update_task",
            {"task": first["task_id"], "status": "done", "note": "Lock order is fine; added an index."},
        )
        print(f"9. bob-codex took task #{done['number']} to in_progress, then {done['status']} with a note")

        board = await call(alice, "list_tasks", {"room": ROOM})
        for task in board["tasks"]:
            note = parse_envelopes(task["note"], board["boundary"]) if task["note"] else []
            print(
                f"10. alice-claude sees #{task['number']} {task['title']!r}: {task['status']},"
                f" consent {task['consent_state']}" + (f", bob-codex's note (enveloped): {note[0]!r}" if note else "")
            )


def audit() -> None:
    # Audit rows hold ids only (never bodies); the CLI's listings name them.
    names = {a["agent_id"]: a["handle"] for a in cli("agent", "list")["agents"]}
    names |= {o["owner_id"]: o["handle"] for o in cli("owner", "list")["owners"]}
    names |= {r["room_id"]: r["name"] for r in cli("room", "list")["rooms"]}
    names |= {g["grant_id"]: f"{g['from_owner']}->{g['to_owner']}" for g in cli("grant", "list")["grants"]}
    names |= LABELS
    print("11. agent-rooms audit tail -n 30 --json, the steps above:")
    for r in cli("audit", "tail", "-n", "30"):
        if r["action"] not in SHOWN and r["outcome"] == "ok":
            continue
        d = r["detail"]
        facts = [names[d["task_id"]]] if d.get("task_id") in names else []
        facts += [f"{k}={d[k]}" for k in ("consent_state", "mode", "via") if d.get(k)]
        facts += [f"status={'->'.join(d['status'])}"] if isinstance(d.get("status"), list) else []
        facts += [f"collaborator={names[d['collaborator_id']]}"] if d.get("collaborator_id") else []
        facts += [f"reason={r['reason']}"] if r["reason"] else []
        who = names.get(r["actor_id"], r["actor_kind"] if r["actor_kind"] != "operator" else "operator")
        print(
            f"    {r['seq']:>3} {who:<13} {r['action']:<17} {names.get(r['target'], r['target'] or '-'):<10}"
            f" {r['outcome']:<7} {' '.join(facts)}".rstrip()
        )
    verdict = subprocess.run(agent_rooms("audit", "verify"), env=ENV, check=True, capture_output=True, text=True)
    print(f"12. agent-rooms audit verify: {verdict.stdout.strip()}")
    print("done: bob's agent worked on alice's task only once bob's policy or bob himself agreed")


if __name__ == "__main__":
    setup()
    anyio.run(work)
    audit()
