"""The 2019 application's deployments as labs: the plan of `kubekvm import-legacy`, as a rule
(no database here; `kubekvm.legacy_import` reads the source and carries the plan out).

The 2019 KubeKVM kept documents like `{"name": "D2", "type": "TecnologiaDeComputadores",
"replicas": 2, "estado": "Pendiente"}` in its `deployments` collection. Each becomes a lab:

- `type` → the template of the same words (`TecnologiaDeComputadores` →
  `tecnologia-de-computadores`, `validation.suggest_name` splitting CamelCase); a type with no
  such template is reported and the deployment skipped;
- `name` → a valid lab name (`D2` → `d2`, accents and spaces made valid the same way a person's
  typing is), every rename reported; a name another deployment or an existing lab already has
  becomes `name-2`, `-3`…, reported as a conflict; the old name stays the lab's title;
- `replicas` → the lab's machines (1 to the server's maximum; otherwise refused, reported);
- `estado` → whether the machines run: the 2019 states of a deployment that was wanted up
  (`Pendiente`, `Activo`, `Creando`, `Running`…) start them; anything else (`Inactivo`,
  `Parado`, `Error`, unknown) leaves them stopped, an unknown one reported.

Deployments are taken in the order of their `_id`, so a run decides the same renames as the one
before; a deployment already imported (its `_id` is recorded with the lab it became) is
skipped, so a second run changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubekvm import validation
from kubekvm.domain import Power

RUNNING_STATES = {"pendiente", "activo", "activa", "creando", "iniciando", "ejecutando", "running", "pending",
                  "active", "creating"}
STOPPED_STATES = {"inactivo", "inactiva", "parado", "parada", "detenido", "detenida", "apagado", "error",
                  "fallido", "stopped", "inactive", "failed"}


@dataclass(frozen=True)
class Planned:
    key: str  # the source document's _id, as text
    source_name: str
    lab: str
    template: str
    replicas: int
    power: Power


@dataclass
class Plan:
    labs: list[Planned] = field(default_factory=list)
    renames: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    unknown_types: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        said = [f"rename: {line}" for line in self.renames]
        said += [f"conflict: {line}" for line in self.conflicts]
        said += [f"unknown type: {line}" for line in self.unknown_types]
        said += [f"refused: {line}" for line in self.refused]
        said += [f"note: {line}" for line in self.notes]
        said += [f"already imported: {line}" for line in self.already]
        return said


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _free(wanted: str, taken: set[str]) -> str:
    """`wanted`, or `wanted-2`, `-3`… (cut to fit a name) if taken."""
    if wanted not in taken:
        return wanted
    for number in range(2, 10_000):
        suffix = f"-{number}"
        candidate = wanted[:validation.NAME_MAX_LENGTH - len(suffix)].rstrip("-") + suffix
        if candidate not in taken:
            return candidate
    raise ValueError(f"no free name like {wanted}")  # ten thousand labs of one name: not a 2019 database


def plan(documents: Iterable[Mapping[str, Any]], *, templates: Iterable[str], existing: Iterable[str],
         imported: Mapping[str, str], max_replicas: int) -> Plan:
    """What importing `documents` does, given the templates and lab names there are now and the
    deployments imported before (`imported`: source key → lab)."""
    result = Plan()
    known = set(templates)
    taken = set(existing)
    firsts: dict[str, str] = {}  # lab name -> the source name that took it in this run
    for document in sorted(documents, key=lambda d: str(d.get("_id"))):
        key = str(document.get("_id"))
        raw_name = _text(document.get("name"))
        shown = repr(raw_name) if raw_name is not None else f"_id {key}"
        if key in imported:
            result.already.append(f"{shown} as {imported[key]}")
            continue
        name = validation.suggest_name(raw_name) if raw_name else None
        if name is None:
            result.refused.append(f"{shown}: no usable name in it")
            continue
        raw_type = _text(document.get("type"))
        template = validation.suggest_name(raw_type, split_words=True) if raw_type else None
        if template is None or template not in known:
            result.unknown_types.append(f"{shown} has type {raw_type!r}: there is no template "
                                        f"{template or '(none)'}; skipped")
            continue
        replicas = document.get("replicas")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= max_replicas:
            result.refused.append(f"{shown}: replicas {replicas!r} is not 1 to {max_replicas}")
            continue
        estado = _text(document.get("estado")) or ""
        power = Power.RUNNING if estado.strip().lower() in RUNNING_STATES else Power.STOPPED
        if estado.strip().lower() not in RUNNING_STATES | STOPPED_STATES:
            result.notes.append(f"{shown} has estado {estado!r}, unknown: its machines stay stopped")
        lab = _free(name, taken)
        if lab != name:
            before = firsts.get(name)
            by = f"{before!r} of this import" if before is not None else "an existing lab"
            result.conflicts.append(f"{shown} becomes {name}, already {by}'s: imported as {lab}")
        elif name != raw_name:
            result.renames.append(f"{shown} → {lab}")
        taken.add(lab)
        firsts.setdefault(name, raw_name or "")
        result.labs.append(Planned(key=key, source_name=raw_name or "", lab=lab, template=template,
                                   replicas=replicas, power=power))
    return result
