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
    """Sanitise each text and envelope those another owner wrote; rows as for `provenance`.

    One boundary per response, chosen after every cross-owner text is known, so no content holds it.
    """
    cleaned = [content.sanitize(t) for t in texts]
    labels = [provenance(caller, r) for r in rows]
    foreign = [c.text for c, (_, rel) in zip(cleaned, labels, strict=True) if rel == "cross_owner"]
    boundary = content.new_boundary(foreign) if foreign else None
    out = []
    for row, clean, (author, rel) in zip(rows, cleaned, labels, strict=True):
        text = clean.text
        if boundary is not None and rel == "cross_owner":
            text = content.envelope(text, boundary=boundary, author=row["handle"], owner=row["owner_handle"])
        out.append(Rendered(text, list(clean.flags), author, rel))
    return out, boundary


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
