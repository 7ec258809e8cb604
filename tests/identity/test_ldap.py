"""Sign-in against a real LDAP directory (Debian's slapd, `tests.support.slapd`) through a real
`kubekvm serve`: the login form, roles from groups and the admins list, refusals (a wrong or
empty password, a disabled user, LDAP filter injections, a local account's name), and a lab's
roster filled from a directory group and refreshed after the group changed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from ldap3 import MODIFY_ADD, Connection
from ldap3 import Server as LdapServer

from kubekvm.directory import Directory
from kubekvm.errors import Unavailable
from kubekvm.identity_config import LdapDirectory
from tests.security.test_fuzz_forms import HOSTILE_TEXT
from tests.support.processes import Server, free_port
from tests.support.sign_in_check import sign_in_check
from tests.support.slapd import PASSWORDS, SUFFIX, Slapd, start_slapd

USERS = "{ users { name role signsInWith hasPassword } }"


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    directory = start_slapd()
    try:
        yield directory
    finally:
        directory.stop()


@pytest.fixture(scope="module")
def server(start_kubekvm: Callable[..., Server], slapd: Slapd) -> Server:
    return start_kubekvm(env=slapd.settings())


def _login(server: Server, name: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=server.url, timeout=60)
    form = client.get("/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf, "the login page has no CSRF token"
    return client, client.post("/login", data={"name": name, "password": password, "csrf_token": csrf.group(1)})


def _me(client: httpx.Client) -> dict[str, Any]:
    body = client.post("/graphql", json={"query": "{ me { kind name role } }"}).json()
    me: dict[str, Any] = body["data"]["me"]
    return me


def _accounts(server: Server) -> dict[str, dict[str, Any]]:
    body = server.graphql(USERS)
    assert not body.get("errors"), body
    return {u["name"]: u for u in body["data"]["users"]}  # type: ignore[index]


def _refused(server: Server, name: str, password: str) -> str:
    client, answer = _login(server, name, password)
    try:
        assert answer.status_code == 401, answer.text[:500]
        assert _me(client)["kind"] == "anonymous"
        error = re.search(r'id="login-error">([^<]+)<', answer.text)
        assert error, answer.text[:500]
        return error.group(1)
    finally:
        client.close()


@pytest.mark.parametrize(("name", "role"), [("tina", "TEACHER"), ("sam", "STUDENT"), ("alice", "ADMIN")])
def test_a_directory_user_signs_in_with_the_role_their_groups_give(server: Server, name: str, role: str) -> None:
    client, answer = _login(server, name, PASSWORDS[name])
    try:
        assert answer.status_code == 303, answer.text[:500]
        assert _me(client) == {"kind": "user", "name": name, "role": role}
        # Their password is the directory's: the account page says so instead of a form to change it.
        page = client.get("/account").text
        assert 'id="password-elsewhere"' in page and 'action="/account/password"' not in page
    finally:
        client.close()
    account = _accounts(server)[name]
    assert (account["role"], account["signsInWith"], account["hasPassword"]) == (role, "ldap", False)
    users = httpx.get(f"{server.url}/users", headers=server.admin_headers, timeout=30).text
    row = users[users.index(f'id="user-{name}"'):].split("</tr>", 1)[0]
    assert "directory (LDAP)" in row and f'action="/users/{name}/link"' not in row


def test_a_wrong_or_empty_password_and_an_unknown_name_are_refused_alike(server: Server) -> None:
    # An empty password would be an LDAP "unauthenticated bind", which the directory accepts.
    said = {_refused(server, "dora", "not-her-password"), _refused(server, "dora", ""),
            _refused(server, "nobody", "whatever")}
    assert said == {"Wrong username or password."}
    assert "dora" not in _accounts(server) and "nobody" not in _accounts(server)


def test_a_directory_user_in_no_mapped_group_is_refused_and_the_audit_says_why(server: Server) -> None:
    said = _refused(server, "nina", PASSWORDS["nina"])
    assert "puts you in no group that may use KubeKVM" in said
    assert "nina" not in _accounts(server)
    body = server.graphql('{ auditLog(action: "login", target: "user:nina") { items { outcome message } } }')
    assert body["data"]["auditLog"]["items"] == [{"outcome": "UNAUTHENTICATED", "message": said}]  # type: ignore[index]


@pytest.mark.parametrize("name", ["ursula", "lena"])
def test_a_disabled_directory_user_cannot_sign_in(server: Server, name: str) -> None:
    # The password is right, but the entry is outside the user filter: ursula's employeeType is
    # disabled, lena's account is locked (pwdAccountLockedTime).
    assert _refused(server, name, PASSWORDS[name]) == "Wrong username or password."
    assert name not in _accounts(server)


@pytest.mark.parametrize("typed", [
    # Unescaped, this widens the filter to let a disabled user in with her own password:
    # (&(objectClass=inetOrgPerson)(uid=ursula)(|(uid=ursula)(!(employeeType=disabled))))
    "ursula)(|(uid=ursula",
    # The classic: every entry matches, and a password that binds any one of them would do.
    "*)(uid=*",
    "*",
])
def test_an_ldap_filter_injection_in_the_username_matches_nobody(server: Server, typed: str) -> None:
    assert _refused(server, typed, PASSWORDS["ursula"]) == "Wrong username or password."
    assert "ursula" not in _accounts(server)


def test_a_local_account_of_the_same_name_is_not_taken_by_the_directory(server: Server) -> None:
    password = server.user("sara", "student")  # a local account with its own password
    assert _refused(server, "sara", PASSWORDS["sara"]) == "Wrong username or password."
    client, answer = _login(server, "sara", password)  # the local password still works
    try:
        assert answer.status_code == 303
        assert _me(client)["name"] == "sara"
    finally:
        client.close()
    assert _accounts(server)["sara"]["signsInWith"] == "local"


def test_a_directory_that_cannot_be_reached_is_unavailable_not_a_wrong_password() -> None:
    closed = LdapDirectory(url=f"ldap://127.0.0.1:{free_port()}", user_base=f"ou=people,{SUFFIX}",
                           group_base=f"ou=groups,{SUFFIX}", timeout_seconds=2)
    with pytest.raises(Unavailable, match="directory"):
        asyncio.run(Directory(closed).authenticate("sam", "sam-pw"))


FILL = """mutation($n: String!, $g: String) {
  fillRosterFromGroup(name: $n, group: $g) { deployment { roster rosterGroup } createdAccounts leftOut }
}"""


def test_a_roster_is_filled_from_a_group_and_refreshed_from_it(server: Server, slapd: Slapd) -> None:
    server.graphql('mutation { createTemplate(input: {name: "dir-tpl", image: "nowhere.qcow2", memoryMib: 128, '
                   "diskGib: 1}) { name } }")
    made = server.graphql('mutation { createDeployment(input: {name: "redes", template: "dir-tpl", replicas: 2}) '
                          "{ name } }")
    assert not made.get("errors"), made
    body = server.graphql(FILL, {"n": "redes", "g": "cn=redes-2026"})
    assert not body.get("errors"), body
    filled = body["data"]["fillRosterFromGroup"]  # type: ignore[index]
    # sam and sara are students; tina is staff (left out); ursula is disabled (outside the filter).
    assert filled["deployment"] == {"roster": ["sam", "sara"], "rosterGroup": "cn=redes-2026"}
    assert filled["leftOut"] == ["tina"]
    # dora joins the group in the directory; a refresh (no group named) takes her in.
    admin = Connection(LdapServer(slapd.url), user=f"cn=admin,{SUFFIX}", password="admin-secret", auto_bind=True)
    try:
        assert admin.modify(f"cn=redes-2026,ou=groups,{SUFFIX}",
                            {"member": [(MODIFY_ADD, [f"uid=dora,ou=people,{SUFFIX}"])]}), admin.result
    finally:
        admin.unbind()
    body = server.graphql(FILL, {"n": "redes", "g": None})
    assert not body.get("errors"), body
    refreshed = body["data"]["fillRosterFromGroup"]  # type: ignore[index]
    assert refreshed["deployment"]["roster"] == ["dora", "sam", "sara"]
    assert "dora" in refreshed["createdAccounts"]
    # dora's account, made by the roster, is hers when she signs in through the directory.
    client, answer = _login(server, "dora", PASSWORDS["dora"])
    try:
        assert answer.status_code == 303
        assert _me(client) == {"kind": "user", "name": "dora", "role": "STUDENT"}
    finally:
        client.close()
    assert _accounts(server)["dora"]["signsInWith"] == "ldap"


@pytest.mark.parametrize(("group", "code"), [("no-such-group", "NOT_FOUND"),
                                             ("*)(cn=*", "NOT_FOUND"),
                                             ("cn=staff,ou=people,dc=elsewhere", "VALIDATION_FAILED")])
def test_a_group_that_is_not_there_is_refused_and_the_roster_kept(server: Server, group: str, code: str) -> None:
    server.graphql('mutation { createTemplate(input: {name: "dir-tpl", image: "nowhere.qcow2", memoryMib: 128, '
                   "diskGib: 1}) { name } }")
    server.graphql('mutation { createDeployment(input: {name: "kept", template: "dir-tpl", replicas: 1}) { name } }')
    server.graphql('mutation { setRoster(name: "kept", students: ["stu-kept"]) { unbound } }')
    body = server.graphql(FILL, {"n": "kept", "g": group})
    assert body["errors"][0]["extensions"]["code"] == code, body  # type: ignore[index]
    lab = server.graphql('{ deployment(name: "kept") { roster rosterGroup } }')
    assert lab["data"]["deployment"] == {"roster": ["stu-kept"], "rosterGroup": None}  # type: ignore[index]


def test_the_lab_page_fills_the_roster_from_a_group(server: Server) -> None:
    server.graphql('mutation { createTemplate(input: {name: "dir-tpl", image: "nowhere.qcow2", memoryMib: 128, '
                   "diskGib: 1}) { name } }")
    server.graphql('mutation { createDeployment(input: {name: "by-page", template: "dir-tpl", replicas: 1}) '
                   "{ name } }")
    server.user("page-admin", "admin")  # a local admin: local passwords still sign in beside the directory
    client = server.session("page-admin")
    try:
        page = client.get("/labs/by-page").text
        assert 'id="roster-group-form"' in page and "Fill from the group" in page
        answer = client.post("/labs/by-page/roster/group", data={"group": "students"})
        assert answer.status_code == 303, answer.text[:500]
        assert answer.headers["location"] == "/labs/by-page#roster"
        page = client.get("/labs/by-page").text
        assert "Refresh from the group" in page and 'value="students"' in page
    finally:
        client.close()
    lab = server.graphql('{ deployment(name: "by-page") { roster rosterGroup } }')
    # students: sam, sara (local here: taken as she is a student account), dora.
    assert lab["data"]["deployment"] == {"roster": ["dora", "sam", "sara"], "rosterGroup": "students"}  # type: ignore[index]
    audit = server.graphql('{ auditLog(action: "fillRosterFromGroup", target: "lab:by-page") { items { actor outcome } } }')
    assert audit["data"]["auditLog"]["items"] == [{"actor": "page-admin", "outcome": "ok"}]  # type: ignore[index]


def _directory(slapd: Slapd, url: str, **tls: Any) -> Directory:
    return Directory(LdapDirectory(url=url, bind_dn=f"cn=kubekvm,ou=services,{SUFFIX}",
                                   bind_password="service-secret", user_base=f"ou=people,{SUFFIX}",
                                   group_base=f"ou=groups,{SUFFIX}", timeout_seconds=10, **tls))


@pytest.mark.parametrize("how", ["StartTLS", "ldaps"])
def test_the_directory_is_reached_over_tls_checked_against_the_ca_given(slapd: Slapd, how: str) -> None:
    url = slapd.url if how == "StartTLS" else slapd.ldaps_url
    trusted = _directory(slapd, url, start_tls=how == "StartTLS", ca_file=slapd.ca_file)
    person = asyncio.run(trusted.authenticate("sam", PASSWORDS["sam"]))
    assert person is not None and person.username == "sam"
    # The system's CAs do not know the test CA: the certificate is refused, nothing is sent in clear.
    untrusted = _directory(slapd, url, start_tls=how == "StartTLS")
    with pytest.raises(Unavailable):
        asyncio.run(untrusted.authenticate("sam", PASSWORDS["sam"]))


def test_the_settings_check_finds_a_person_and_says_their_role(slapd: Slapd) -> None:
    code, shown = sign_in_check(slapd.settings(), "--user", "tina")
    assert code == 0, shown
    [line] = [line for line in shown.splitlines() if line.startswith("ldap user tina: ")]
    assert line.startswith(f"ldap user tina: uid=tina,ou=people,{SUFFIX}; groups: ") and line.endswith("; role: teacher")
    assert f"cn=staff,ou=groups,{SUFFIX}" in line
    code, shown = sign_in_check(slapd.settings(KUBEKVM_LDAP_BIND_PASSWORD="not-it"), "--user", "ursula")
    assert code == 1 and "refused KubeKVM's own bind" in shown, shown


@pytest.mark.parametrize("htmx", [False, True])
def test_the_group_form_survives_hostile_values(server: Server, htmx: bool) -> None:
    server.graphql('mutation { createTemplate(input: {name: "dir-tpl", image: "nowhere.qcow2", memoryMib: 128, '
                   "diskGib: 1}) { name } }")
    server.graphql('mutation { createDeployment(input: {name: "hostile", template: "dir-tpl", replicas: 1}) '
                   "{ name } }")
    server.user("page-admin", "admin")
    client = server.session("page-admin")
    try:
        for value in [*HOSTILE_TEXT, "cn=*", "cn=x,ou=groups," + SUFFIX + ")(cn=*", ",,,", "=", "cn="]:
            answer = client.post("/labs/hostile/roster/group", data={"group": value},
                                 headers={"HX-Request": "true"} if htmx else {})
            assert answer.status_code < 500, (value, answer.status_code, answer.text[:300])
    finally:
        client.close()
    lab = server.graphql('{ deployment(name: "hostile") { roster rosterGroup } }')
    assert lab["data"]["deployment"] == {"roster": [], "rosterGroup": None}  # type: ignore[index]


def test_an_account_disabled_here_is_refused_though_the_directory_knows_the_password(server: Server) -> None:
    client, answer = _login(server, "tina", PASSWORDS["tina"])
    try:
        assert answer.status_code == 303, answer.text[:500]
        assert not server.graphql('mutation { disableUser(name: "tina") { name } }').get("errors")
        assert _me(client)["kind"] == "anonymous"  # her open session ended
        assert "This account is disabled" in _refused(server, "tina", PASSWORDS["tina"])
        # A wrong password is still only a wrong password.
        assert _refused(server, "tina", "not-her-password") == "Wrong username or password."
    finally:
        client.close()
        assert not server.graphql('mutation { enableUser(name: "tina") { name } }').get("errors")
    client, answer = _login(server, "tina", PASSWORDS["tina"])
    client.close()
    assert answer.status_code == 303
