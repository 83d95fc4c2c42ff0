"""Outgoing sanitising: every tool result's free text made safe to show, and its pages cut to the byte cap.

Room content on its way out is sanitised, labelled with provenance, and enveloped when another owner wrote
it (the text rules themselves are `content.py`'s); a page of results ends where its answer would pass
the `page_bytes` limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from agent_rooms_mcp import content, policy
from agent_rooms_mcp.models import Author, Relation
from agent_rooms_mcp.principals import Viewer
from agent_rooms_mcp.results import Shape, item_bytes, result_bytes
from agent_rooms_mcp.settings import Limits


# Not frozen: a frozen dataclass sets each field through object.__setattr__, three times the cost of a plain one,
# and a page makes one per item (nobody changes one after `render`).
@dataclass(slots=True)
class Rendered:
    text: str
    flags: list[str]
    author: Author
    relation: Relation


class Fields(Protocol):
    """A row read by column name: a `sqlite3.Row` or any mapping (the type checker sees no Mapping in a Row)."""

    def __getitem__(self, key: str, /) -> Any: ...


def provenance(caller: Viewer, row: Fields) -> tuple[Author, Relation]:
    """Who wrote an item (row: agent_id, handle, tool, owner_id, owner_handle) and how they stand to the caller."""
    author = Author(handle=row["handle"], owner=row["owner_handle"], tool=row["tool"])
    return author, policy.relation(caller, row["agent_id"], row["owner_id"])


def render(caller: Viewer, rows: Sequence[Fields], texts: Sequence[str]) -> tuple[list[Rendered], str | None]:
    """Every free text (models.FreeText) of one result, each with its writer's row as for `provenance`,
    goes out through here: sanitised, and enveloped when another owner wrote it.

    One boundary per response, chosen after every cross-owner text is known, so no content holds it.
    """
    # A page's items come from few writers: each writer's label is made once and shared by their items.
    known: dict[str, tuple[Author, Relation]] = {}
    labels = [known.get(row["agent_id"]) or known.setdefault(row["agent_id"], provenance(caller, row)) for row in rows]
    if content.unchanged(texts) and all(rel != "cross_owner" for _, rel in known.values()):
        # Nothing to remove and no other owner's words (nearly every page): each text is shown as it is.
        return [Rendered(text, [], author, rel) for text, (author, rel) in zip(texts, labels, strict=True)], None
    cleaned = [content.sanitize(text) for text in texts]
    boundary = _boundary(cleaned, [rel for _, rel in labels])
    return [
        Rendered(_shown(clean, boundary, author.handle, author.owner, rel), list(clean.flags), author, rel)
        for clean, (author, rel) in zip(cleaned, labels, strict=True)
    ], boundary


def render_columns(
    caller: Viewer, rows: Sequence[Fields], columns: Sequence[str]
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
    """The rendering itself, of (text, author handle, owner handle, relation to the reader): for the wake
    prompt, whose reader is the woken agent (`render` is the same for a result). Returns each text as shown,
    with its flags."""
    cleaned = [content.sanitize(text) for text, _, _, _ in items]
    boundary = _boundary(cleaned, [rel for _, _, _, rel in items])
    return [
        content.Clean(_shown(clean, boundary, author, owner, rel), clean.flags)
        for clean, (_, author, owner, rel) in zip(cleaned, items, strict=True)
    ], boundary


def _boundary(cleaned: Sequence[content.Clean], relations: Sequence[Relation]) -> str | None:
    """A boundary that none of the cross-owner texts holds, or None when no other owner wrote any."""
    foreign = [c.text for c, rel in zip(cleaned, relations, strict=True) if rel == "cross_owner"]
    return content.new_boundary(foreign) if foreign else None


def _shown(clean: content.Clean, boundary: str | None, author: str, owner: str, rel: Relation) -> str:
    if boundary is None or rel != "cross_owner":
        return clean.text
    return content.envelope(clean.text, boundary=boundary, author=author, owner=owner)


def flags_of(*items: Rendered | None) -> list[str]:
    """What sanitising removed from any of one item's texts, in FLAG_ORDER."""
    found = {f for item in items if item for f in item.flags}
    return [f for f in content.FLAG_ORDER if f in found]


def notice(boundary: str | None) -> str | None:
    return content.UNTRUSTED_NOTICE if boundary else None


def page_budget(limits: Limits, empty: BaseModel | Shape) -> int:
    """Bytes left for a page's items: the cap less the result without them (`empty`) and the frame around it."""
    return limits.page_bytes - limits.result_frame_bytes - result_bytes(empty)


def within_bytes(
    items: Sequence[BaseModel | Shape], budget: int, bound: int | None = None, *, keep_one: bool = True
) -> int:
    """How many leading items fit in `budget` bytes of answer. A page keeps at least one (`keep_one`), so a
    reader always moves on: the input caps keep any one item under the page cap, escaped text and all.
    `bound`, a cheap upper bound of all the items' bytes together, spares a page far below the budget an extra
    encoding of each item."""
    if bound is not None and bound <= budget:
        return len(items)
    total = 0
    for i, item in enumerate(items):
        total += item_bytes(item)
        if total > budget:
            return max(i, 1) if keep_one else i
    return len(items)


@dataclass(frozen=True, slots=True)
class Cut:
    """Where a page ends: how many of its items it keeps, the cursor to continue from, and whether more wait."""

    kept: int
    next_after: int
    has_more: bool


def cut_page(
    limits: Limits,
    empty: BaseModel | Shape,
    items: Sequence[BaseModel | Shape],
    cursors: Sequence[int],
    fetched: int,
    after: int,
    bound: int | None = None,
) -> Cut:
    """End a page at its count (`fetched` rows were asked for one more than the page holds) or at the byte cap,
    whichever comes first. `empty` is the result without its items; `cursors[i]` is item i's position."""
    kept = within_bytes(items, page_budget(limits, empty), bound)
    return Cut(kept, cursors[kept - 1] if kept else after, fetched > kept)
