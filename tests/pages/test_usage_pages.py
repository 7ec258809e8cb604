"""The usage limits on the pages, against a real server: the teacher's form (a refused value
beside its field, nothing saved), every student's hours and a grant on the lab's page, and a
student's hours left and the reason their machine was stopped on "My VMs"."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pymongo import MongoClient

from tests.pages.fake_host import FakeHost, data
from tests.support.processes import Server

LAB = "usage-pages"


@pytest.fixture(scope="module")
def lab(server: Server, fake_host: FakeHost, tiny_template: str) -> str:
    server.token_for("upstu", "student")  # an account with a password, before the roster names it
    data(server.graphql("mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }",
                        {"i": {"name": LAB, "template": tiny_template, "replicas": 1}}))
    data(server.graphql(f'mutation {{ setRoster(name: "{LAB}", students: ["upstu"]) {{ unbound }} }}'))
    fake_host.converge(LAB)
    return LAB


@pytest.fixture
def teacher(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30, headers=server.admin_headers) as client:
        yield client


def test_a_refused_limit_is_shown_beside_its_field_and_nothing_is_saved(teacher: httpx.Client, lab: str) -> None:
    refused = teacher.post(f"/labs/{lab}/usage", data={"idleMinutes": "1e3", "quotaHours": "-2",
                                                       "idleCpuPercent": "", "maxRunMinutes": ""})
    assert refused.status_code == 422
    assert 'id="idleMinutes-error"' in refused.text and 'id="quotaHours-error"' in refused.text
    assert 'value="1e3"' in refused.text, "what was typed comes back"
    policy = data(teacher.post("/graphql", json={"query": f'{{ deployment(name: "{lab}") '
                                                          '{ usagePolicy { idleMinutes quotaHours } } }'}).json())
    assert policy["deployment"]["usagePolicy"] == {"idleMinutes": None, "quotaHours": None}


def test_limits_students_hours_and_a_grant(server: Server, teacher: httpx.Client, lab: str) -> None:
    saved = teacher.post(f"/labs/{lab}/usage", data={"idleMinutes": "20", "idleCpuPercent": "",
                                                     "maxRunMinutes": "", "quotaHours": "0"})
    assert saved.status_code == 303
    page = teacher.get(f"/labs/{lab}")
    assert 'value="20"' in page.text and 'id="usage-upstu"' in page.text
    granted = teacher.post(f"/labs/{lab}/usage/upstu/grant", data={"hours": "1,5"})
    assert granted.status_code == 303
    page = teacher.get(f"/labs/{lab}")
    assert "Granted 1.5 more hour(s) to upstu" in page.text
    assert "lab-events" in page.text or "1.5 more hour(s) granted to upstu" in page.text
    usage = data(teacher.post("/graphql", json={"query": f'{{ labUsage(name: "{lab}") '
                                                         '{ student grantedHours budgetHours } }'}).json())
    assert usage["labUsage"] == [{"student": "upstu", "grantedHours": 1.5, "budgetHours": 0.0}]
    sheet = teacher.get(f"/labs/{lab}/usage.csv").text.splitlines()
    assert sheet[0].endswith("student hours outside slots,student hours left") and sheet[1].endswith(",0.00,1.50")
    bad = teacher.post(f"/labs/{lab}/usage/nobody/grant", data={"hours": "1"})
    assert bad.status_code == 303 and teacher.get(f"/labs/{lab}").text.count("is not a student of lab") == 1

    # The student's page: hours left, and why the platform stopped their machine.
    with MongoClient(server.database_uri) as client:
        client[server.database_name]["machines"].update_one(
            {"name": f"{lab}-1"}, {"$set": {"desired": "stopped", "stop_reason": "idle"}})
    student = httpx.get(f"{server.url}/my", timeout=30,
                        headers={"Authorization": f"Bearer {server.token_for('upstu', 'student')}"})
    assert "1.5 h left outside scheduled hours" in student.text
    assert "Stopped because it was idle" in student.text
    assert "Stops by itself after 20 minutes idle." in student.text, "the rule is told beforehand"
