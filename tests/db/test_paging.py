"""Pages of labs with unreadable documents among them (`kubekvm.services.paging`): in order,
every readable lab once across the pages, totals that count only those, on each database."""

from __future__ import annotations

from typing import Any

from kubekvm.models import Deployment, readable
from kubekvm.services import Services
from kubekvm.shapes import readable_filter


def lab(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "title": name, "template": "tiny-linux", "replicas": 1, "phase": "Active", **fields}


# Readable: optional fields missing or null where nullable, any number for an int.
GOOD = [lab("a-1"), lab("a-3", owner=None), lab("a-5", replicas=2.0, running=None), lab("a-7", owner="t1"),
        lab("a-9", owner="t1", roster=["s1"], policy={})]
# Unreadable: a required field missing, a wrong type, an enum value this version does not know.
BAD = [{"name": "a-0", "type": "TecnologiaDeComputadores", "replicas": 2},
       lab("a-2", phase="Pendiente"), lab("a-4", replicas="two"), lab("a-6", owner=7),
       lab("a-8", roster="s1", owner="t1")]


async def test_the_database_leaves_out_what_a_read_turns_away(services: Services) -> None:
    collection = Deployment.get_pymongo_collection()
    await collection.insert_many([dict(d) for d in GOOD + BAD])
    judged = {d["name"] async for d in collection.find(readable_filter(Deployment))}
    read = {d["name"] async for d in collection.find({}) if readable(Deployment, d) is not None}
    assert judged == read == {d["name"] for d in GOOD}


async def test_pages_show_each_readable_lab_once_with_its_total(services: Services) -> None:
    await Deployment.get_pymongo_collection().insert_many([dict(d) for d in GOOD + BAD])
    names = sorted(d["name"] for d in GOOD)
    for size in (1, 2, 3, 5, 6):
        shown: list[str] = []
        for offset in range(0, 7, size):
            page = await services.labs.list_deployments(offset=offset, limit=size)
            assert page.total == len(names), (size, offset)
            shown += [item.name for item in page.items]
        assert shown == names, size
    # Narrowed in the query: a teacher's labs (an unreadable one of theirs is not counted).
    owned = await services.labs.list_deployments(owner="t1", limit=1)
    assert [item.name for item in owned.items] == ["a-7"] and owned.total == 2
    owned = await services.labs.list_deployments(owner="t1", limit=10)
    assert [item.name for item in owned.items] == ["a-7", "a-9"] and owned.total == 2
    assert (await services.labs.list_deployments(owner="nobody")).total == 0
