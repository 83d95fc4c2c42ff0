"""Room content on its way out: sanitised, labelled with provenance, and enveloped when another owner wrote it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent_rooms_mcp import content, policy
from agent_rooms_mcp.models import Author, Relation
from agent_rooms_mcp.principals import Viewer


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    flags: list[str]
    author: Author
    relation: Relation


def provenance(caller: Viewer, row: Mapping[str, Any]) -> tuple[Author, Relation]:
    """Who wrote an item (row: agent_id, handle, tool, owner_id, owner_handle) and how they stand to the caller."""
    author = Author(handle=row["handle"], owner=row["owner_handle"], tool=row["tool"])
    return author, policy.relation(caller, row["agent_id"], row["owner_id"])


def render(
    caller: Viewer, rows: Sequence[Mapping[str, Any]], texts: Sequence[str]
) -> tuple[list[Rendered], str | None]:
    """Every free text (models.FreeText) of one result, each with its writer's row as for `provenance`,
    goes out through here: sanitised, and enveloped when another owner wrote it.

    One boundary per response, chosen after every cross-owner text is known, so no content holds it.
    """
    labels = [provenance(caller, row) for row in rows]
    shown, boundary = said(
        [(text, author.handle, author.owner, rel) for text, (author, rel) in zip(texts, labels, strict=True)]
    )
    return [Rendered(c.text, list(c.flags), a, rel) for c, (a, rel) in zip(shown, labels, strict=True)], boundary


def render_columns(
    caller: Viewer, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> tuple[list[dict[str, Rendered]], str | None]:
    """`render` for several free-text columns of each row, all its writer's (a file's name and media type,
    a run's outcome and session id): per row, each of those columns that is not null, as shown."""
    cells = [(i, col) for i, row in enumerate(rows) for col in columns if row[col] is not None]
    shown, boundary = render(caller, [rows[i] for i, _ in cells], [rows[i][col] for i, col in cells])
    out: list[dict[str, Rendered]] = [{} for _ in rows]
    for (i, col), item in zip(cells, shown, strict=True):
        out[i][col] = item
    return out, boundary


def said(items: Sequence[tuple[str, str, str, Relation]]) -> tuple[list[content.Clean], str | None]:
    """The rendering itself, of (text, author handle, owner handle, relation to the reader): for `render`,
    and for the wake prompt, whose reader is the woken agent. Returns each text as shown, with its flags."""
    cleaned = [content.sanitize(text) for text, _, _, _ in items]
    foreign = [c.text for c, item in zip(cleaned, items, strict=True) if item[3] == "cross_owner"]
    boundary = content.new_boundary(foreign) if foreign else None
    out = []
    for clean, (_, author, owner, rel) in zip(cleaned, items, strict=True):
        if boundary is not None and rel == "cross_owner":
            clean = content.Clean(
                content.envelope(clean.text, boundary=boundary, author=author, owner=owner), clean.flags
            )
        out.append(clean)
    return out, boundary


def flags_of(*items: Rendered | None) -> list[str]:
    """What sanitising removed from any of one item's texts, in FLAG_ORDER."""
    found = {f for item in items if item for f in item.flags}
    return [f for f in content.FLAG_ORDER if f in found]


def notice(boundary: str | None) -> str | None:
    return content.UNTRUSTED_NOTICE if boundary else None


def within_bytes(sizes: Sequence[int], cap: int) -> int:
    """How many items of these text sizes fit in one result of at most `cap` bytes (always at least one):
    a page ends early rather than growing past what a client will take, and `has_more` says so."""
    total = 0
    for i, size in enumerate(sizes):
        total += size
        if total > cap and i > 0:
            return i
    return len(sizes)
