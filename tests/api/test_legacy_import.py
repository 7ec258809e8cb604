"""`kubekvm import-legacy` as an operator runs it: a second real database (SecantusDB) holding the
2019 application's deployments — invalid names, duplicates, an unknown type, a bad replica count,
an unknown state — imported into a real server's database: the dry run's report and nothing
written, then the labs made (templates, sizes, power, owner, title, audit), the source byte for
byte as it was, and a second run changing nothing."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from tests.api.test_graphql import data
from tests.support.processes import VENV_BIN, Server, start_secantus

SOURCE_DB = "kubekvm2019"
DEPLOYMENTS_2019 = [
    {"name": "D2", "type": "TecnologiaDeComputadores", "replicas": 2, "estado": "Pendiente"},
    {"name": "d2", "type": "RedesNeuronales", "replicas": 1, "estado": "Inactivo"},
    {"name": "Redes Neuronales 2019", "type": "RedesNeuronales", "replicas": 3, "estado": "Activo"},
    {"name": "Q1", "type": "ComputacionCuantica", "replicas": 1, "estado": "Pendiente"},
    {"name": "D3", "type": "TecnologiaDeComputadores", "replicas": 1, "estado": "Parado"},
    {"name": "¡¡!!", "type": "RedesNeuronales", "replicas": 1, "estado": "Pendiente"},
    {"name": "big", "type": "RedesNeuronales", "replicas": 0, "estado": "Pendiente"},
    {"name": "ok", "type": "TecnologiaDeComputadores", "replicas": 1, "estado": "Raro"},
]


@pytest.fixture(scope="module")
def source() -> Iterator[str]:
    """The 2019 database, on a server process of its own; its URI names the database."""
    uri, child = start_secantus()
    with MongoClient(uri) as client:
        client[SOURCE_DB]["deployments"].insert_many([dict(d) for d in DEPLOYMENTS_2019])
        client[SOURCE_DB]["usuarios"].insert_one({"nombre": "profe", "clave": "x"})
    yield uri.replace("/?", f"/{SOURCE_DB}?")
    child.stop()


def snapshot(uri: str) -> dict[str, Any]:
    """Every collection of the source: its documents (as BSON-decoded values, _ids included) and
    its indexes."""
    with MongoClient(uri) as client:
        db = client[SOURCE_DB]
        return {name: (list(db[name].find().sort("_id")), sorted(str(i) for i in db[name].list_indexes()))
                for name in sorted(db.list_collection_names())}


def run_import(server: Server, source: str, *extra: str, owner: str = "prof") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MONGODB_URI": server.database_uri, "KUBEKVM_DATABASE": server.database_name}
    return subprocess.run([str(VENV_BIN / "kubekvm"), "import-legacy", "--from", source, "--owner", owner, *extra],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def labs(server: Server) -> dict[str, dict[str, Any]]:
    found = data(server.graphql("{ deployments { items { name title template replicas power owner } } }"))
    return {lab["name"]: lab for lab in found["deployments"]["items"]}


def test_the_2019_deployments_become_labs_once_and_the_source_is_untouched(server: Server, source: str) -> None:
    server.user("prof", "teacher")
    data(server.graphql('mutation { createDeployment(input: {name: "d3", template: "redes-neuronales", '
                        'replicas: 1, power: STOPPED}) { name } }'))
    before = snapshot(source)

    dry = run_import(server, source, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    report = dry.stdout
    assert "8 deployment(s) read" in report and f"{SOURCE_DB}.deployments" in report
    for line in ("would create: d2 from 'D2' (tecnologia-de-computadores, 2 machine(s), running)",
                 "rename: 'D2' → d2",
                 "conflict: 'd2' becomes d2, already 'D2' of this import's: imported as d2-2",
                 "rename: 'Redes Neuronales 2019' → redes-neuronales-2019",
                 "unknown type: 'Q1' has type 'ComputacionCuantica': there is no template computacion-cuantica",
                 "conflict: 'D3' becomes d3, already an existing lab's: imported as d3-2",
                 "refused: '¡¡!!': no usable name in it",
                 "refused: 'big': replicas 0 is not 1 to 200",
                 "note: 'ok' has estado 'Raro', unknown: its machines stay stopped",
                 "5 lab(s) would create — dry run: nothing was written"):
        assert line in report, f"{line!r} not in:\n{report}"
    assert set(labs(server)) == {"d3"}, "the dry run wrote labs"

    done = run_import(server, source)
    assert done.returncode == 0, done.stderr
    assert "5 lab(s) created; 0 already imported" in done.stdout, done.stdout
    made = labs(server)
    assert set(made) == {"d3", "d2", "d2-2", "redes-neuronales-2019", "d3-2", "ok"}
    assert {k: (v["template"], v["replicas"], v["power"], v["owner"], v["title"]) for k, v in made.items()
            if k != "d3"} == {
        "d2": ("tecnologia-de-computadores", 2, "RUNNING", "prof", "D2"),
        "d2-2": ("redes-neuronales", 1, "STOPPED", "prof", "d2"),
        "redes-neuronales-2019": ("redes-neuronales", 3, "RUNNING", "prof", "Redes Neuronales 2019"),
        "d3-2": ("tecnologia-de-computadores", 1, "STOPPED", "prof", "D3"),
        "ok": ("tecnologia-de-computadores", 1, "STOPPED", "prof", "ok"),
    }
    audit = data(server.graphql('{ auditLog(action: "createDeployment", actor: "cli") { items { target outcome } } }'))
    assert sorted(e["target"] for e in audit["auditLog"]["items"]) == [
        "lab:d2", "lab:d2-2", "lab:d3-2", "lab:ok", "lab:redes-neuronales-2019"]

    with MongoClient(server.database_uri) as client:
        target = client[server.database_name]
        state = (sorted(target["deployments"].find({}, {"updated_at": 0, "phase": 0, "message": 0, "version": 0,
                                                       "phase_since": 0}), key=str),
                 target["machines"].count_documents({}), sorted(target["legacy_imports"].find(), key=str))
    again = run_import(server, source)
    assert again.returncode == 0, again.stderr
    assert "0 lab(s) created; 5 already imported" in again.stdout and "already imported: 'D2' as d2" in again.stdout
    with MongoClient(server.database_uri) as client:
        target = client[server.database_name]
        assert state == (sorted(target["deployments"].find({}, {"updated_at": 0, "phase": 0, "message": 0,
                                                                "version": 0, "phase_since": 0}), key=str),
                         target["machines"].count_documents({}), sorted(target["legacy_imports"].find(), key=str))

    assert snapshot(source) == before, "the import changed the 2019 database"


def test_an_owner_who_is_no_teacher_is_refused_before_anything(server: Server, source: str) -> None:
    server.user("a-student", "student")  # an account, but not one labs may belong to
    before = labs(server)
    with MongoClient(server.database_uri) as client:
        imported = list(client[server.database_name]["legacy_imports"].find())
    refused = run_import(server, source, owner="a-student")
    assert refused.returncode == 1 and "no teacher or admin named 'a-student'" in refused.stderr
    # Nothing written (the module's other test may have imported into this database before).
    assert labs(server) == before
    with MongoClient(server.database_uri) as client:
        assert list(client[server.database_name]["legacy_imports"].find()) == imported
