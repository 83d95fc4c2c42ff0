"""Audit checkpoints (DESIGN §6): sign the log's row count and head, and hold the log to signed checkpoints.

Issuing one is the operator's, at the hub's machine (it needs the issuer key). Each extends the one before:
the hub keeps every checkpoint it signed in a file in its home and refuses to sign a log that no longer
holds the last of them, so an unbroken series proves the log only grew. The copy that counts against
tampering is the owner's, kept away from this machine: whoever can rewrite the database can rewrite this
file too.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from agent_rooms_mcp import audit
from agent_rooms_mcp.audit import Actor, Verdict
from agent_rooms_mcp.auth.audit_checkpoints import (
    Checkpoint,
    CheckpointRefused,
    Previous,
    read_checkpoint,
    sign_checkpoint,
)
from agent_rooms_mcp.errors import ErrorCode, RoomsError, invalid
from agent_rooms_mcp.home import PRIVATE_FILE, check_private_file
from agent_rooms_mcp.store.database import Store


@dataclass(frozen=True, slots=True)
class Issued:
    checkpoint: Checkpoint
    token: str


@dataclass(frozen=True, slots=True)
class Held:
    """`audit verify --checkpoint`'s answer: the chain's verdict, then the checkpoints' (the first failure)."""

    verdict: Verdict
    checkpoints: int
    covered_rows: int


class Checkpoints:
    def __init__(self, store: Store, key: SigningKey, deployment_id: str, kept: Path) -> None:
        self._store = store
        self._key = key
        self._deployment_id = deployment_id
        self._kept = kept

    async def issue(self, operator: Actor) -> Issued:
        """Sign a checkpoint of the log as it is, extending the last one this hub kept; CONFLICT when the log
        fails its chain or no longer holds that last checkpoint, since signing it would vouch for a tampered
        log. One audit row (`audit.checkpoint`), and the checkpoint covers that row too."""
        fd = os.open(self._kept, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            # Two operators checkpointing at once would both extend the same previous one: one at a time.
            fcntl.flock(fd, fcntl.LOCK_EX)
            check_private_file(self._kept)
            previous = self._last_kept()
            # The whole chain is walked in a read snapshot (about 2 s per 100,000 rows), not under the write
            # lock every other writer waits on; the write then walks only what landed since.
            seen = await self._store.read(lambda conn: (audit.verify(conn), audit.head(conn)))

            def write(conn: sqlite3.Connection) -> tuple[int, bytes, str]:
                chain, (seen_rows, seen_head) = seen
                if chain.ok and seen_rows:
                    chain = audit.held_to(conn, seen_rows, seen_head)
                if chain.ok:
                    chain = audit.verify(conn, after=(seen_rows, seen_head))
                if not chain.ok:
                    raise RoomsError(
                        ErrorCode.CONFLICT,
                        f"the audit log fails at seq {chain.first_bad_seq} ({chain.problem}): a checkpoint would"
                        " vouch for it; see: agent-rooms audit verify",
                    )
                detail: dict[str, object] = {}
                if previous is not None:
                    held = audit.held_to(conn, previous.rows, bytes.fromhex(previous.head))
                    if not held.ok:
                        raise RoomsError(
                            ErrorCode.CONFLICT,
                            f"the audit log no longer extends the last checkpoint in {self._kept}: {held.problem}",
                        )
                    detail = {"prev_rows": previous.rows, "prev_digest": previous.digest}
                seq = audit.append(conn, operator, "audit.checkpoint", detail=detail)
                row = conn.execute("SELECT row_hash, ts FROM audit WHERE seq = ?", (seq,)).fetchone()
                return seq, bytes(row["row_hash"]), row["ts"]

            rows, head, at = await self._store.write(write)
            checkpoint = Checkpoint(self._deployment_id, rows, head.hex(), at, previous)
            token = sign_checkpoint(self._key, checkpoint)
            # After the commit: had the row rolled back, a kept checkpoint would name a row that never was.
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
            return Issued(checkpoint, token)
        finally:
            os.close(fd)  # closing releases the lock

    def _last_kept(self) -> Previous | None:
        text = self._kept.read_text(encoding="ascii", errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            return None
        try:
            last = read_checkpoint(lines[-1], self._key.verify_key, self._deployment_id)
        except CheckpointRefused as e:
            raise RoomsError(
                ErrorCode.CONFLICT,
                f"the last checkpoint kept in {self._kept} does not verify ({e}); move that file aside to start"
                " a new series",
            ) from None
        return last.previous_of_next(lines[-1])

    def read(self, tokens: list[str], source: str) -> list[Checkpoint]:
        """The checkpoints of a file (one a line, the hub's own kept file included), each verified, and each
        extending the one before it in the file; INVALID_ARGUMENT naming the file and the line otherwise."""
        tokens = [t.strip() for t in tokens if t.strip()]
        if not tokens:
            raise invalid(source, "holds no checkpoint")
        checkpoints: list[Checkpoint] = []
        for n, token in enumerate(tokens, start=1):
            where = source if len(tokens) == 1 else f"{source} line {n}"
            try:
                checkpoint = read_checkpoint(token, self._key.verify_key, self._deployment_id)
            except CheckpointRefused as e:
                raise invalid(where, f"refused: {e}") from None
            if checkpoints and checkpoint.prev != checkpoints[-1].previous_of_next(tokens[n - 2]):
                raise invalid(where, "does not extend the checkpoint on the line before it")
            checkpoints.append(checkpoint)
        return checkpoints

    async def hold(self, checkpoints: list[Checkpoint]) -> Held:
        """The chain's verdict, then the log held to each checkpoint and to the previous one each names."""

        def check(conn: sqlite3.Connection) -> Held:
            verdict = audit.verify(conn)
            if verdict.ok:
                for c in checkpoints:
                    pins = [(c.prev.rows, c.prev.head)] if c.prev else []
                    for rows, head in [*pins, (c.rows, c.head)]:
                        held = audit.held_to(conn, rows, bytes.fromhex(head))
                        if not held.ok:
                            return Held(held, len(checkpoints), 0)
            covered = max((c.rows for c in checkpoints), default=0)
            return Held(verdict, len(checkpoints), covered)

        return await self._store.read(check)
