"""`agent set` (issue 14 item 8): an agent's workdir, tool and sandbox change without burning its handle; a
workdir must exist when it is typed; turning the sandbox off is confirmed; a refused change changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import fingerprint
from tests.test_cli import ar, ok_json, populated


def test_agent_set_changes_workdir_tool_and_sandbox_with_one_audit_row_each(tmp_path: Path) -> None:
    home = populated(tmp_path / "home")
    work = tmp_path / "project"
    work.mkdir()
    added = ok_json(home, "agent", "list")["agents"][0]
    assert (added["workdir"], added["sandbox"]) == (None, True)  # on by default (DESIGN §5)
    done = ok_json(home, "agent", "set", "alice-claude", "--workdir", str(work), "--tool", "codex")
    assert (done["workdir"], done["tool"], done["sandbox"]) == (str(work.resolve()), "codex", True)
    done = ok_json(home, "agent", "set", "alice-claude", "--sandbox", "off", "--yes")
    assert (done["workdir"], done["tool"], done["sandbox"]) == (str(work.resolve()), "codex", False)
    text = ar(home, "agent", "set", "alice-claude", "--sandbox", "on")
    assert text.exit_code == 0 and "sandbox=on" in text.stdout
    tail = ok_json(home, "audit", "tail", "-n", "3")
    rows = tail if isinstance(tail, list) else tail["rows"]
    # (the operator acts on alice's agent: each row names her, `on_behalf_of`)
    details = [
        {k: v for k, v in r["detail"].items() if k != "on_behalf_of"} for r in rows if r["action"] == "agent.set"
    ]
    assert details == [{"workdir": "changed", "tool": "codex"}, {"sandbox": False}, {"sandbox": True}]
    assert str(work) not in json.dumps(rows)  # the audit log keeps no paths


def test_a_workdir_that_does_not_exist_is_refused_naming_it_and_nothing_changes(tmp_path: Path) -> None:
    home = populated(tmp_path / "home")
    before = fingerprint(home / "hub.db")
    typo = tmp_path / "projcet"
    for argv in (
        ["agent", "set", "alice-claude", "--workdir", str(typo)],
        ["agent", "add", "alice-codex", "--owner", "alice", "--tool", "codex", "--workdir", str(typo)],
    ):
        refused = ar(home, *argv, "--json")
        assert refused.exit_code != 0
        error = json.loads(refused.stdout or refused.stderr)
        assert error["code"] == "INVALID_ARGUMENT" and str(typo) in error["message"], error
        assert "create it first" in error["message"]
    assert fingerprint(home / "hub.db") == before
    # The handle was not burnt: it can be added once the directory exists.
    typo.mkdir()
    ok_json(home, "agent", "add", "alice-codex", "--owner", "alice", "--tool", "codex", "--workdir", str(typo))


def test_turning_the_sandbox_off_asks_first_and_a_refusal_changes_nothing(tmp_path: Path) -> None:
    home = populated(tmp_path / "home")
    before = fingerprint(home / "hub.db")
    declined = ar(home, "agent", "set", "alice-claude", "--sandbox", "off")  # no terminal: not confirmed
    assert declined.exit_code != 0 and "--yes" in declined.stdout + declined.stderr
    nothing = ar(home, "agent", "set", "alice-claude", "--json")
    assert nothing.exit_code != 0 and "--sandbox" in nothing.stdout + nothing.stderr
    assert fingerprint(home / "hub.db") == before


def test_a_workdir_that_would_show_a_woken_cli_what_its_sandbox_hides_is_refused(tmp_path: Path) -> None:
    home = populated(tmp_path / "home")
    (home / "workdirs" / "alice-claude").mkdir(parents=True)  # another agent's default workdir, which a purge removes
    before = fingerprint(home / "hub.db")
    exposures = [
        (str(home / "workdirs" / "alice-claude"), "inside the hub's home"),
        ("/", "contains"),
        (str(Path.home()), "is a home"),
        (str(home), "is a home"),
        (str(home / "keys"), "inside the hub's home"),
        ("/etc", "system directory"),
    ]
    for exposed, said in exposures:
        refused = ar(home, "agent", "set", "alice-claude", "--workdir", exposed, "--json")
        error = json.loads(refused.stdout or refused.stderr)
        assert refused.exit_code != 0 and error["code"] == "INVALID_ARGUMENT", (exposed, error)
        assert said in error["message"], (exposed, error)
    assert fingerprint(home / "hub.db") == before
