"""The replica set init script (deploy/kubernetes/base/mongodb/init-replicaset.js), run under
node against a simulated replica set (mongosh_fake.js), since no mongod runs here.

What is checked is the script's own logic: it initiates a fresh set once, with member 0, adds
the other members one reconfig at a time, survives being run again, follows a scale-up, never
initiates a second set when member 0 lost its volume, waits for members that are late, and
keeps the server's database user in line with the Secret. That mongod answers as simulated
is the fake's assumption, documented there.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parents[1] / "deploy" / "kubernetes" / "base" / "mongodb" / "init-replicaset.js"
FAKE = HERE / "mongosh_fake.js"
ROOT = {"user": "root", "pwd": "p@ss/w:rd"}  # characters that must be escaped in a URI


def host(i: int) -> str:
    return f"mongodb-{i}.mongodb.kubekvm.svc:27017"


def environment(members: int, **overrides: str) -> dict[str, str]:
    env = {
        "MONGODB_MEMBERS": str(members),
        "MONGODB_REPLICA_SET": "rs0",
        "MONGODB_SERVICE": "mongodb",
        "POD_NAMESPACE": "kubekvm",
        "KUBEKVM_DATABASE": "kubekvm",
        "MONGO_INITDB_ROOT_USERNAME": ROOT["user"],
        "MONGO_INITDB_ROOT_PASSWORD": ROOT["pwd"],
        "KUBEKVM_DB_USERNAME": "kubekvm",
        "KUBEKVM_DB_PASSWORD": "app-password",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v != ""}


def fresh(members: int) -> dict[str, Any]:
    return {
        "root": ROOT,
        "members": {host(i): {"up": True, "downFor": 0, "setName": None} for i in range(members)},
        "config": None,
        "users": {},
        "busyOnce": False,
    }


@pytest.fixture(scope="module")
def run(find_tool):
    node = find_tool("node") or find_tool("nodejs")
    if node is None:
        pytest.skip("node is not installed: the init script's simulation needs it")

    def run(state: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
        scenario = json.dumps({"state": state, "env": env})
        result = subprocess.run(
            [node, str(FAKE), str(SCRIPT), scenario],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return json.loads(result.stdout)

    return run


def test_initiates_a_fresh_set_and_adds_the_members(run) -> None:
    result = run(fresh(3), environment(3))
    assert result["exitCode"] == 0, result["output"]
    assert result["log"] == [
        f"initiate {host(0)}",
        f"add {host(1)}",
        f"add {host(2)}",
        "createUser kubekvm",
    ]
    config = result["state"]["config"]
    assert config["_id"] == "rs0"
    assert [m["host"] for m in config["members"]] == [host(0), host(1), host(2)]
    assert result["state"]["users"]["kubekvm"] == {
        "pwd": "app-password",
        "roles": [{"role": "readWrite", "db": "kubekvm"}],
    }


def test_running_again_changes_nothing_but_the_password(run) -> None:
    first = run(fresh(3), environment(3))
    second = run(first["state"], environment(3, KUBEKVM_DB_PASSWORD="rotated"))
    assert second["exitCode"] == 0, second["output"]
    assert second["log"] == ["updateUser kubekvm"]
    assert second["state"]["config"] == first["state"]["config"]
    assert second["state"]["users"]["kubekvm"]["pwd"] == "rotated"


def test_single_member_for_dev(run) -> None:
    result = run(fresh(1), environment(1))
    assert result["exitCode"] == 0, result["output"]
    assert result["log"] == [f"initiate {host(0)}", "createUser kubekvm"]


def test_scale_up_adds_the_new_members(run) -> None:
    one = run(fresh(1), environment(1))["state"]
    state = copy.deepcopy(one)
    for i in (1, 2):
        state["members"][host(i)] = {"up": True, "downFor": 0, "setName": None}
    result = run(state, environment(3))
    assert result["exitCode"] == 0, result["output"]
    assert result["log"] == [f"add {host(1)}", f"add {host(2)}", "updateUser kubekvm"]


def test_member_0_with_a_lost_volume_is_not_initiated_again(run) -> None:
    state = run(fresh(3), environment(3))["state"]
    state["members"][host(0)]["setName"] = None  # an empty volume, a set that still exists
    state["members"][host(0)]["up"] = True
    result = run(state, environment(3))
    assert not any(entry.startswith("initiate") for entry in result["log"])
    assert any("not initiating" in line for line in result["output"])


def test_waits_for_late_members_and_a_busy_reconfig(run) -> None:
    state = fresh(3)
    state["members"][host(2)]["downFor"] = 5
    state["busyOnce"] = True
    result = run(state, environment(3))
    assert result["exitCode"] == 0, result["output"]
    assert [m["host"] for m in result["state"]["config"]["members"]] == [host(0), host(1), host(2)]


def test_fails_on_a_wrong_root_password(run) -> None:
    result = run(fresh(1), environment(1, MONGO_INITDB_ROOT_PASSWORD="wrong"))
    assert result["exitCode"] != 0
    assert result["state"]["config"] is None


def test_fails_without_the_member_count(run) -> None:
    result = run(fresh(1), environment(1, MONGODB_MEMBERS=""))
    assert result["exitCode"] == 2
    assert result["log"] == []
