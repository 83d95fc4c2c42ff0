"""Files shared in a room (DESIGN §3): stored in the database, names sanitised, read back in ranges."""

from __future__ import annotations

import base64
import binascii
import hashlib
import sqlite3
from typing import Literal

from agent_rooms_mcp import audit, content, policy
from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.errors import invalid, not_found, too_large
from agent_rooms_mcp.models import FileInfo, FileList, FileRange, SharedFile
from agent_rooms_mcp.principals import Caller, Scope
from agent_rooms_mcp.services.render import cut_page, flags_of, notice, render, render_columns
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store

_WITH_AUTHOR = (
    "SELECT f.file_id, f.name, f.media_type, f.size, f.sha256, f.created_at,"
    " a.agent_id, a.handle, a.tool, a.owner_id, o.handle AS owner_handle {extra}"
    " FROM files f JOIN agents a ON a.agent_id = f.agent_id JOIN owners o ON o.owner_id = a.owner_id"
)


def clean_name(name: str, limit: int) -> str:
    """A file name can never be a path: separators become '_', and '.'/'..' are refused."""
    cleaned = content.sanitize(name).text.replace("\n", " ").replace("\t", " ").strip()
    cleaned = cleaned.replace("/", "_").replace("\\", "_")
    if cleaned in ("", ".", ".."):
        raise invalid("name", "a file name must have visible characters and cannot be '.' or '..'")
    if len(cleaned.encode()) > limit:
        raise too_large("name", limit)
    return cleaned


class Files:
    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

    async def share(
        self,
        caller: Caller,
        room_ref: str,
        name: str,
        text: str | None,
        data_base64: str | None,
        media_type: str | None,
    ) -> SharedFile:
        policy.require_scope(caller, Scope.POST)
        data = self._decode(text, data_base64)
        safe_name = clean_name(name, self._limits.file_name_bytes)
        digest = hashlib.sha256(data).hexdigest()

        def run(conn: sqlite3.Connection) -> SharedFile:
            queries.recheck_caller(conn, caller, Scope.POST)
            room = queries.room_for_member(conn, room_ref, caller)
            file_id = new_id("file")
            conn.execute(
                "INSERT INTO files (file_id, room_id, name, media_type, size, sha256, content, agent_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    file_id,
                    room.room_id,
                    safe_name,
                    media_type,
                    len(data),
                    digest,
                    data,
                    caller.agent_id,
                    now_utc(),
                ),
            )
            audit.append(
                conn,
                caller.actor,
                "file.share",
                target=room.room_id,
                detail={"file_id": file_id, "size": len(data), "sha256": digest},
            )
            return SharedFile(file_id=file_id, name=safe_name, size=len(data), sha256=digest)

        return await self._store.write(run)

    def _decode(self, text: str | None, data_base64: str | None) -> bytes:
        if (text is None) == (data_base64 is None):
            raise invalid("content", "give exactly one of content or content_base64")
        limit = self._limits.file_bytes
        if text is not None:
            data = text.encode("utf-8")
        else:
            assert data_base64 is not None
            # Base64 is 4/3 of the bytes: refuse early without decoding something huge.
            if len(data_base64) > (limit // 3 + 1) * 4 + 4:
                raise too_large("content_base64", limit)
            try:
                data = base64.b64decode(data_base64, validate=True)
            except (binascii.Error, ValueError):
                raise invalid("content_base64", "not valid base64") from None
        if len(data) > limit:
            raise too_large("content", limit)
        return data

    async def list_files(self, caller: Caller, room_ref: str, after: int, limit: int) -> FileList:
        policy.require_scope(caller, Scope.READ)

        def run(conn: sqlite3.Connection) -> FileList:
            room = queries.room_for_member(conn, room_ref, caller)
            # The rowid is the cursor: insertion order, and what files_by_room_position walks.
            rows = conn.execute(
                _WITH_AUTHOR.format(extra=", f.rowid AS position")
                + " WHERE f.room_id = ? AND f.rowid > ? ORDER BY f.rowid LIMIT ?",
                (room.room_id, after, limit + 1),
            ).fetchall()
            page = rows[:limit]
            # A file's name and media type are its sharer's words like its content: the same path renders them.
            shown, boundary = render_columns(caller, page, ("name", "media_type"))
            files = []
            for r, cols in zip(page, shown, strict=True):
                name, media_type = cols["name"], cols.get("media_type")
                files.append(
                    FileInfo(
                        file_id=r["file_id"],
                        name=name.text,
                        size=r["size"],
                        sha256=r["sha256"],
                        media_type=media_type.text if media_type else None,
                        author=name.author,
                        relation=name.relation,
                        created_at=r["created_at"],
                        flags=flags_of(name, media_type),
                    )
                )
            empty = FileList(files=[], boundary=boundary, notice=notice(boundary), next_after=after, has_more=True)
            cut = cut_page(self._limits, empty, files, [r["position"] for r in page], len(rows), after)
            return empty.model_copy(
                update={"files": files[: cut.kept], "next_after": cut.next_after, "has_more": cut.has_more}
            )

        return await self._store.read(run)

    async def read(self, caller: Caller, room_ref: str, file_id: str, offset: int, length: int) -> FileRange:
        policy.require_scope(caller, Scope.READ)

        def run(conn: sqlite3.Connection) -> FileRange:
            room = queries.room_for_member(conn, room_ref, caller)
            # substr() on a BLOB counts bytes from 1: only the range leaves the database.
            row = conn.execute(
                _WITH_AUTHOR.format(extra=", substr(f.content, ?, ?) AS chunk")
                + " WHERE f.file_id = ? AND f.room_id = ?",
                (offset + 1, length, file_id, room.room_id),
            ).fetchone()
            if row is None:
                raise not_found("file")
            chunk = bytes(row["chunk"] or b"")
            encoding: Literal["utf-8", "base64"]
            try:
                text, encoding = chunk.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                # Bytes that are not text go out as base64: still the sharer's, so enveloped like text.
                text, encoding = base64.b64encode(chunk).decode("ascii"), "base64"
            (name, body), boundary = render(caller, [row, row], [row["name"], text])
            return FileRange(
                file_id=row["file_id"],
                name=name.text,
                offset=offset,
                length=len(chunk),
                size=row["size"],
                eof=offset + len(chunk) >= row["size"],
                encoding=encoding,
                content=body.text,
                author=body.author,
                relation=body.relation,
                flags=flags_of(name, body),
                boundary=boundary,
                notice=notice(boundary),
            )

        return await self._store.read(run)
