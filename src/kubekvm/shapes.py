"""Which stored documents a model can read, as a MongoDB filter (`readable_filter`).

`kubekvm.models.readable` turns away, one by one as they are read, documents a model cannot
parse (a 2019 leftover, one written by hand). A count or a page's skip happens in the database,
before any document is read: `readable_filter` lets it leave out the same documents, derived
from the model's fields, so a list's `total` and its pages agree with what it shows.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

from pydantic import BaseModel


def readable_filter(model: type[BaseModel]) -> dict[str, Any]:
    """A MongoDB filter that leaves out stored documents `model` certainly cannot read (a required
    field missing, a field of the wrong BSON type, an enum field holding no value of it), so a
    count or a page's skip agrees with what `readable` shows. Lenient where unsure (types it
    cannot express are not checked; numbers of any kind pass for an int), because a document it
    wrongly left out would vanish from every list: what still fails to parse is skipped on
    reading, as before."""
    cached = _READABLE_FILTERS.get(model)
    if cached is not None:
        return cached
    # One `$jsonSchema` rather than a condition per field (`$or` of `$exists` and `$type`): the
    # same documents, judged in one pass per document, which the embedded database does about
    # three times faster (a count of 1,000 labs: 0.29 s against 0.85 s under load).
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        if name in ("id", "revision_id"):
            continue
        check = _shape_check(info.annotation)
        if check is None:
            continue
        key = info.alias or name
        properties[key] = check
        if info.is_required():
            required.append(key)
    schema: dict[str, Any] = {"properties": properties}
    if required:
        schema["required"] = required
    found: dict[str, Any] = {"$jsonSchema": schema} if properties else {}
    _READABLE_FILTERS[model] = found
    return found


_READABLE_FILTERS: dict[type[BaseModel], dict[str, Any]] = {}
_BSON_TYPES: dict[type, list[str]] = {
    str: ["string"], bool: ["bool"], int: ["int", "long", "double", "decimal"],
    list: ["array"], dict: ["object"],
}


def _shape_check(annotation: Any) -> dict[str, Any] | None:
    """The schema one field's stored value must meet when present, or None where it is not checked."""
    nullable = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            return None
        annotation = members[0]
        origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values: list[Any] = [member.value for member in annotation]
        return {"enum": [*values, None] if nullable else values}
    base = origin or annotation
    if base is not bool and isinstance(base, type) and issubclass(base, BaseModel):
        names = ["object"]
    else:
        # A subclass counts as its base (beanie's `Indexed(str)` is a subclass of str); bool
        # before int, which it subclasses.
        found = next((types_ for kind, types_ in _BSON_TYPES.items()
                      if isinstance(base, type) and issubclass(base, kind)), None)
        if found is None:
            return None
        names = list(found)
    return {"bsonType": [*names, "null"] if nullable else names}
