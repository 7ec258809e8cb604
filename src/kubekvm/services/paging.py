"""A page of stored documents in order and how many there are: what a list of labs shows.

Documents the model cannot read (a 2019 leftover, one written by hand) are turned away one by
one as they are read (`kubekvm.models.readable`), and a count or a skip in the database leaves
them out by the model's shape (`kubekvm.shapes.readable_filter`), so a list's total and its
pages agree with what it shows. That shape is a condition on every field, judged by the
database for each document it passes: on the embedded database that cost several times the
read itself (1,000 labs: 1.0 s of 1.2 s for the list, as much again for its total, under
load). So the shape is judged only where the database must count or skip without us reading:

- the first page is read without it: documents in order, the unreadable ones skipped as they
  come, read on until the page is full, and one document more tells whether any follow;
- when none follow (a teacher's 20 labs, 1,000 labs asked for 1,000 at a time) the total is
  what was read, and no count is made;
- otherwise the total is counted by the shape, unless the caller shows none (a GraphQL query
  not asking for `total`), and a later page skips by it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from beanie import Document

from kubekvm.models import readable
from kubekvm.shapes import readable_filter

D = TypeVar("D", bound=Document)


async def read_page(model: type[D], criteria: dict[str, Any], *, sort: str, offset: int, limit: int,
                    count: bool = True) -> tuple[list[D], int | None]:
    """The readable documents of `model` matching `criteria`, ordered by the field `sort`,
    `offset` of them skipped and at most `limit` taken, with how many readable ones match
    (None when not `count` and more follow the page: a caller that shows no total)."""
    collection = model.get_pymongo_collection()
    shape = readable_filter(model)
    guarded = {"$and": [criteria, shape]} if criteria else shape
    if offset > 0:
        total = await collection.count_documents(guarded) if count else None
        raw = await collection.find(guarded).sort(sort, 1).skip(offset).limit(limit).to_list()
        return [item for item in (readable(model, doc) for doc in raw) if item is not None], total
    items: list[D] = []
    more = False
    # One batch holds the page and the document after it, unless some are unreadable.
    cursor = collection.find(criteria).sort(sort, 1).batch_size(limit + 1)
    try:
        async for doc in cursor:
            if len(items) == limit:
                more = True
                break
            item = readable(model, doc)
            if item is not None:
                items.append(item)
    finally:
        await cursor.close()
    if not more:
        return items, len(items)
    return items, (await collection.count_documents(guarded) if count else None)
