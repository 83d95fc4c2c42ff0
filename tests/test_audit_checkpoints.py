"""Signed audit checkpoints (DESIGN §6): the log held to what the hub signed, against an attacker with the file.

Each tamper is made as someone with the database file would make it: a raw sqlite3 connection drops the
audit table's triggers, edits, and puts the triggers back, so the schema looks untouched afterwards.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from nacl.signing import SigningKey

from agent_rooms_mcp import audit
from agent_rooms_mcp.auth.audit_checkpoints import (
    Checkpoint,
    CheckpointRefused,
    Previous,
    digest,
    read_checkpoint,
    sign_checkpoint,
)
from agent_rooms_mcp.auth.passports import PassportIssuer, PassportRejected
from agent_rooms_mcp.auth.wake_claims import ClaimRefused, sign_claim, verify_claim
from agent_rooms_mcp.book import CauseText, Claimed
from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.encoding import b64url_decode, b64url_encode
from agent_rooms_mcp.home import load_issuer_key

Tamper = Callable[[sqlite3.Connection], None]


def ar(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"AGENT_ROOMS_HOME": str(home)}, catch_exceptions=False)


def ok_json(home: Path, *args: str) -> dict:
    r = ar(home, *args, "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    assert ar(home, "init").exit_code == 0
    ok_json(home, "owner", "add", "alice")
    ok_json(home, "agent", "add", "alice-claude", "--owner", "alice", "--tool", "claude")
    ok_json(home, "room", "create", "lobby", "--owner", "alice", "--agent", "alice-claude")
    ok_json(home, "owner", "add", "bob")
    return home


def deployment(home: Path) -> str:
    conn = sqlite3.connect(home / "hub.db")
    try:
        return conn.execute("SELECT value FROM meta WHERE key = 'deployment_id'").fetchone()[0]
    finally:
        conn.close()


def verify(home: Path, *args: str) -> tuple[int, dict]:
    r = ar(home, "audit", "verify", *args, "--json")
    return r.exit_code, json.loads(r.stdout)


def as_attacker(home: Path, tamper: Tamper) -> None:
    """Drop the audit table's triggers, tamper, and recreate them exactly as they were."""
    conn = sqlite3.connect(home / "hub.db", isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'")
        saved = [(r["name"], r["sql"]) for r in triggers]
        assert {name for name, _ in saved} >= {"audit_no_update", "audit_no_delete", "audit_only_next_row"}
        conn.execute("BEGIN IMMEDIATE")
        for name, _ in saved:
            conn.execute(f"DROP TRIGGER {name}")
        tamper(conn)
        for _, sql in saved:
            conn.execute(sql)
        conn.execute("COMMIT")
        # The attacker leaves no WAL behind either: the file alone holds the forged log.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def rechain(conn: sqlite3.Connection, start: int) -> None:
    """Recompute every row's prev_hash and row_hash from `start` on, as an attacker hiding an edit would."""
    prev = bytes(conn.execute("SELECT row_hash FROM audit WHERE seq = ?", (start - 1,)).fetchone()[0])
    for row in conn.execute("SELECT * FROM audit WHERE seq >= ? ORDER BY seq", (start,)).fetchall():
        new = audit.row_hash(prev, row["seq"], row)
        conn.execute("UPDATE audit SET prev_hash = ?, row_hash = ? WHERE seq = ?", (prev, new, row["seq"]))
        prev = new


def last_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT max(seq) FROM audit").fetchone()[0])


def edit_row(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE audit SET target = 'room_forged' WHERE seq = 3")


def delete_row(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM audit WHERE seq = 3")


def reorder_rows(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT seq, action, target FROM audit WHERE seq IN (3, 4) ORDER BY seq").fetchall()
    for (seq, _, _), (_, action, target) in zip(rows, reversed(rows), strict=True):
        conn.execute("UPDATE audit SET action = ?, target = ? WHERE seq = ?", (action, target, seq))


def truncate_tail(conn: sqlite3.Connection) -> None:
    # What is left still chains: only the count a checkpoint signed shows rows are gone.
    conn.execute("DELETE FROM audit WHERE seq >= ?", (last_seq(conn) - 1,))


def rewrite_head(conn: sqlite3.Connection) -> None:
    # The last row says something else and carries a fresh, correct hash: nothing comes after it to break.
    seq = last_seq(conn)
    conn.execute("UPDATE audit SET actor_id = 'someone-else' WHERE seq = ?", (seq,))
    rechain(conn, seq)


def rechain_everything(conn: sqlite3.Connection) -> None:
    # An early row is edited and every hash from it on recomputed: the chain is whole again.
    conn.execute("UPDATE audit SET target = 'room_forged' WHERE seq = 3")
    rechain(conn, 3)


# tamper, whether the chain alone catches it, the first bad seq verify --checkpoint names (None: the row
# after the log's new end).
CASES = {
    "an edited row": (edit_row, True, 3),
    "a deleted row": (delete_row, True, 3),
    "reordered rows": (reorder_rows, True, 3),
    "a truncated tail": (truncate_tail, False, None),
    "a rewritten head": (rewrite_head, False, "head"),
    "a fully re-chained log": (rechain_everything, False, "head"),
}


@pytest.mark.invariant(58)
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_every_tamper_is_caught_with_a_checkpoint_where_the_chain_alone_cannot(home: Path, case: str) -> None:
    tamper, chain_catches, first_bad = CASES[case]
    issued = ok_json(home, "audit", "checkpoint", "--out", str(home.parent / "kept-elsewhere"))
    assert verify(home, "--checkpoint", str(home.parent / "kept-elsewhere")) == (
        0,
        {"ok": True, "rows": issued["rows"], "first_bad_seq": None, "problem": None, "checkpoints": 1,
         "checkpoint_rows": issued["rows"]},
    )  # fmt: skip
    as_attacker(home, tamper)

    chain_code, chain = verify(home)
    assert (chain_code, chain["ok"]) == ((1, False) if chain_catches else (0, True))
    code, held = verify(home, "--checkpoint", str(home.parent / "kept-elsewhere"))
    assert code == 1 and held["ok"] is False
    if first_bad is None:
        assert held["first_bad_seq"] == held["rows"] + 1 < issued["rows"]
        assert "cut off" in held["problem"]
    elif first_bad == "head":
        assert held["first_bad_seq"] == issued["rows"]
        assert "re-chained" in held["problem"]
    else:
        assert held["first_bad_seq"] == first_bad
    # Whatever was done, the hub will not sign the tampered log to extend the series.
    refused = ar(home, "audit", "checkpoint")
    assert refused.exit_code == 1 and refused.stderr.startswith("CONFLICT:")


@pytest.mark.invariant(59)
def test_each_checkpoint_extends_the_previous_one_and_the_series_verifies(home: Path) -> None:
    first = ok_json(home, "audit", "checkpoint")
    assert first["prev"] is None
    ok_json(home, "owner", "add", "carol")
    second = ok_json(home, "audit", "checkpoint")
    assert second["rows"] > first["rows"]
    assert second["prev"] == {"rows": first["rows"], "head": first["head"], "digest": digest(first["token"])}
    # Both are signed by this hub, for this deployment, as checkpoints: what they say is what they carry.
    key = load_issuer_key(home / "keys" / "issuer.paserk").verify_key
    for issued in (first, second):
        back = read_checkpoint(issued["token"], key, deployment(home))
        assert (back.rows, back.head, back.at) == (issued["rows"], issued["head"], issued["at"])
    # Each checkpoint is the audit row it ends at, and that row names the checkpoint it extends.
    conn = sqlite3.connect(home / "hub.db")
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT action, detail, row_hash FROM audit WHERE seq = ?", (second["rows"],)).fetchone()
    conn.close()
    assert row["action"] == "audit.checkpoint" and bytes(row["row_hash"]).hex() == second["head"]
    assert json.loads(row["detail"]) == {"prev_rows": first["rows"], "prev_digest": digest(first["token"])}

    # The hub's own kept file is the whole series, one a line, and verifies as one.
    kept = home / "audit-checkpoints"
    assert kept.read_text().split() == [first["token"], second["token"]]
    assert verify(home, "--checkpoint", str(kept))[1]["checkpoints"] == 2
    # A series with a checkpoint left out, or out of order, is not a series.
    third = ok_json(home, "audit", "checkpoint")
    assert verify(home, "--checkpoint", str(kept))[1]["checkpoints"] == 3
    for broken in ([second["token"], first["token"]], [first["token"], third["token"]]):
        path = home.parent / "series"
        path.write_text("\n".join(broken) + "\n")
        r = ar(home, "audit", "verify", "--checkpoint", str(path))
        assert r.exit_code == 1 and "does not extend" in r.stderr, r.stderr


@pytest.mark.invariant(59)
def test_the_hub_refuses_to_extend_a_series_its_log_no_longer_holds(home: Path) -> None:
    ok_json(home, "audit", "checkpoint")
    ok_json(home, "owner", "add", "carol")
    kept = (home / "audit-checkpoints").read_bytes()
    # Re-chained from an early row: the chain verifies, but the last checkpoint's head is no longer in it.
    as_attacker(home, rechain_everything)
    assert verify(home)[1]["ok"] is True
    refused = ar(home, "audit", "checkpoint")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("CONFLICT: the audit log no longer extends the last checkpoint")
    assert (home / "audit-checkpoints").read_bytes() == kept
    # The refusal is audited like any refused operator action, and signs nothing.
    conn = sqlite3.connect(home / "hub.db")
    last = conn.execute("SELECT action, outcome FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    conn.close()
    assert last == ("cli.audit.checkpoint", "denied")


@pytest.mark.invariant(59)
def test_a_checkpoint_that_does_not_verify_or_is_another_hubs_is_refused_with_its_reason(
    home: Path, tmp_path: Path
) -> None:
    token = ok_json(home, "audit", "checkpoint")["token"]
    key = load_issuer_key(home / "keys" / "issuer.paserk")
    body = b64url_decode(token.split(".")[2])
    flipped = bytearray(body)
    flipped[10] ^= 1
    parts = token.split(".")
    altered = ".".join([*parts[:2], b64url_encode(bytes(flipped)), parts[3]])
    # Signed with this hub's very key, for another deployment (a hub restored from the same key files).
    elsewhere = Checkpoint("dep_elsewhere", 3, "ab" * 32, "2026-01-01T00:00:00.000000Z", None)
    other = tmp_path / "other"
    assert ar(other, "init").exit_code == 0
    other_token = ok_json(other, "audit", "checkpoint")["token"]
    cases = {
        "its signature does not verify": altered,
        "for deployment dep_elsewhere, not this hub's": sign_checkpoint(key, elsewhere),
        "signed by another key": other_token,
        "not an audit checkpoint": "garbage",
    }
    for i, (reason, presented) in enumerate(cases.items()):
        path = tmp_path / f"cp{i}"
        path.write_text(presented + "\n")
        r = ar(home, "audit", "verify", "--checkpoint", str(path))
        assert r.exit_code == 1 and r.stderr.startswith("INVALID_ARGUMENT: --checkpoint"), r.stderr
        assert reason in r.stderr, (reason, r.stderr)


KEY = SigningKey.generate()
DEP = "dep_test"
A_CHECKPOINT = Checkpoint(DEP, 7, "cd" * 32, "2026-01-01T00:00:00.000000Z", Previous(3, "ab" * 32, "sha256:x"))


@pytest.mark.invariant(59)
def test_a_checkpoint_never_passes_as_a_passport_or_a_wake_claim_nor_they_as_a_checkpoint() -> None:
    token = sign_checkpoint(KEY, A_CHECKPOINT)
    assert read_checkpoint(token, KEY.verify_key, DEP) == A_CHECKPOINT
    issuer = PassportIssuer(KEY, DEP)
    with pytest.raises(PassportRejected, match="passport_bad_signature"):
        issuer.check(token)
    with pytest.raises(ClaimRefused, match="signature"):
        verify_claim(token, KEY.verify_key, DEP, "lst_a")

    passport, _ = issuer.issue(agent_id="agt_1", owner_id="own_b", tool="claude", epoch=1, ttl=timedelta(hours=1))
    claim = Claimed(
        run_id="run_1", agent_id="agt_1", handle="bob-coder", owner_id="own_b", tool="claude", workdir="/srv/x",
        room_id="room_1", room_name="lobby", trigger="mention", cause_id="msg_1", caused_by="agt_a",
        causers=("own_b",), constrained=False, depth=1, resume_session=None,
        words=CauseText("hello", "alice-claude", "alice", True), run_token="arr_x", env={}, lease=3,
    )  # fmt: skip
    for other in (passport, sign_claim(KEY, DEP, claim, "lst_a", timedelta(seconds=30))):
        with pytest.raises(CheckpointRefused, match="not an audit checkpoint"):
            read_checkpoint(other, KEY.verify_key, DEP)


def test_a_printed_checkpoint_is_the_token_alone_so_a_redirect_keeps_exactly_it(home: Path) -> None:
    printed = ar(home, "audit", "checkpoint")
    assert printed.exit_code == 0 and "the first of its series" in printed.stderr
    kept = home.parent / "redirected"
    kept.write_text(printed.stdout)
    assert printed.stdout.count("\n") == 1 and printed.stdout.startswith("v4.public.")
    verified = ar(home, "audit", "verify", "--checkpoint", str(kept))
    assert verified.stdout.endswith("holds to 1 checkpoint(s), to row 6\n")
