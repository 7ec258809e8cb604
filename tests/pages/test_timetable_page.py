"""A lab's timetable on its pages, as a teacher uses them (plain forms and htmx): every mistake
beside its field with nothing saved, then a timetable saved, shown with its next start on the
lab's page, read back through GraphQL, audited; the usage CSV; the course's end warned about;
the unused labs on the admins' Server page."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.pages.fake_host import data
from tests.support.processes import Server

LAB = "tt-page"


@pytest.fixture(scope="module")
def lab(server: Server, tiny_template: str) -> str:
    server.user("tt-teacher", "teacher")
    token = server.token_for("tt-teacher")
    data(server.graphql(f'mutation {{ createDeployment(input: {{name: "{LAB}", template: "{tiny_template}", '
                        'replicas: 1, power: STOPPED}) { name } }', token=token))
    return LAB


def field_error(html: str, field: str) -> str:
    found = re.search(rf'<p class="field-error" id="{field}-error">([^<]*)</p>', html)
    return found.group(1) if found else ""


def test_a_bad_timetable_is_refused_beside_each_field_and_nothing_is_saved(server: Server, lab: str) -> None:
    client = server.session("tt-teacher")
    try:
        page = client.get(f"/labs/{lab}")
        assert page.status_code == 200 and "No timetable" in page.text
        form = {"slots": "mon 09:00-11:00\nfunday 10:00-12:00", "sessions": "2026-02-30 10:00-11:00",
                "closures": "", "leadMinutes": "9999", "timeZone": "Mars/Olympus", "endsOn": "2020-01-01",
                "csrf_token": client.headers["X-CSRF-Token"]}
        refused = client.post(f"/labs/{lab}/timetable", data=form)
        assert refused.status_code == 422
        assert "Line 2" in field_error(refused.text, "slots")
        assert "not a date" in field_error(refused.text, "sessions")
        assert "between 0 and 240" in field_error(refused.text, "leadMinutes")
        assert "IANA" in field_error(refused.text, "timeZone")
        # What was typed comes back to be corrected.
        assert "funday 10:00-12:00" in refused.text
        # With htmx: the form alone, to swap in place.
        fragment = client.post(f"/labs/{lab}/timetable", data=form, headers={"HX-Request": "true"})
        assert fragment.status_code == 422
        assert 'id="timetable-form"' in fragment.text and "<html" not in fragment.text
        # An end date in the past, alone at fault: refused by the operation, shown beside it.
        past = {**form, "slots": "mon 09:00-11:00", "sessions": "", "leadMinutes": "5", "timeZone": "Europe/Madrid"}
        refused = client.post(f"/labs/{lab}/timetable", data=past)
        assert refused.status_code == 422 and "past" in field_error(refused.text, "endsOn")
        stored = data(server.graphql(f'{{ timetable(name: "{lab}") {{ stored }} }}'))
        assert stored["timetable"]["stored"] is False
    finally:
        client.close()


def test_a_timetable_saved_is_shown_read_and_audited_and_usage_downloads(server: Server, lab: str) -> None:
    client = server.session("tt-teacher")
    last_day = (datetime.now(UTC) + timedelta(days=3)).date().isoformat()
    try:
        saved = client.post(f"/labs/{lab}/timetable", follow_redirects=False, data={
            "slots": "mon-fri 09:00-11:00", "sessions": "", "closures": "2030-12-24 Christmas Eve",
            "leadMinutes": "10", "timeZone": "Europe/Madrid", "endsOn": last_day,
            "csrf_token": client.headers["X-CSRF-Token"]})
        assert saved.status_code == 303 and saved.headers["location"] == f"/labs/{lab}#timetable"
        page = client.get(f"/labs/{lab}").text
        assert "mon,tue,wed,thu,fri 09:00-11:00" in page and 'id="next-start"' in page
        assert "none planned" not in page.split('id="next-start"')[1][:40]
        # The course ends in 3 days, its deletion 30 days after: not yet within the warning's 7 days.
        assert "usage.csv" in page and 'class="warning" role="status"' not in page
        read = data(server.graphql(f'{{ timetable(name: "{lab}") {{ stored timeZone leadMinutes endsOn '
                                   'slots { days start end } closures { first reason } nextStart deletedAt } }'))
        timetable = read["timetable"]
        assert timetable["stored"] and timetable["timeZone"] == "Europe/Madrid" and timetable["leadMinutes"] == 10
        assert timetable["slots"] == [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "11:00"}]
        assert timetable["closures"] == [{"first": "2030-12-24", "reason": "Christmas Eve"}]
        assert timetable["endsOn"] == last_day and timetable["deletedAt"]
        audit = data(server.graphql(f'{{ auditLog(action: "setTimetable", target: "lab:{lab}") '
                                    '{ items { actor outcome } } }'))
        assert {"actor": "tt-teacher", "outcome": "ok"} in audit["auditLog"]["items"]
        usage = client.get(f"/labs/{lab}/usage.csv")
        assert usage.status_code == 200 and usage.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(usage.text)))
        assert rows[0][:3] == ["machine", "student", "state"] and [r[0] for r in rows[1:]] == [f"{lab}-1"]
        # With the usage accounting's figures: the machine never ran, it has no student.
        assert rows[0][7:] == ["hours running", "student hours outside slots", "student hours left"]
        assert rows[1][7:] == ["0.00", "", ""]
        # Another teacher may not read it.
        server.user("tt-other", "teacher")
        other = server.session("tt-other")
        try:
            assert other.get(f"/labs/{lab}/usage.csv").status_code == 404
        finally:
            other.close()
    finally:
        client.close()


def test_graphql_refuses_a_bad_timetable_naming_the_field(server: Server, lab: str) -> None:
    body = server.graphql('mutation { setTimetable(name: "tt-page", input: {slots: [{days: ["mon"], '
                          'start: "11:00", end: "09:00"}]}) { stored } }')
    error = body["errors"][0]  # type: ignore[index]
    assert error["extensions"] == {"code": "VALIDATION_FAILED", "field": "slots"}  # type: ignore[index]
    assert "Item 1" in error["message"]  # type: ignore[index]
    # Who asks is checked before what they typed: another teacher learns nothing of the lab.
    other = server.graphql('mutation { setTimetable(name: "tt-page", input: {timeZone: "Nowhere/Land"}) '
                           '{ stored } }', token=server.token_for("tt-other"))
    assert other["errors"][0]["extensions"]["code"] == "NOT_FOUND"  # type: ignore[index]
    anonymous = server.graphql('mutation { setTimetable(name: "tt-page", input: {timeZone: "Nowhere/Land"}) '
                               '{ stored } }', token=None)
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"  # type: ignore[index]


def test_the_unused_labs_are_on_the_admins_server_page_only(server: Server, lab: str) -> None:
    server.user("tt-admin", "admin")
    admin, teacher = server.session("tt-admin"), server.session("tt-teacher")
    try:
        assert 'id="unused-labs"' in admin.get("/server").text
        assert 'id="unused-labs"' not in teacher.get("/server").text
    finally:
        admin.close()
        teacher.close()
