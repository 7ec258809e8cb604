"""The authorization matrix: every query, mutation and subscription of the schema, called as
anonymous, a student, another teacher, the owning teacher, an admin and a host agent, against
a real server. Each outcome is asserted (allowed, or the code of the refusal), and a refused
call must leave the database as it was (every collection but the audit log and the sign-in
counters is dumped before and after).

The operations are enumerated from the schema: a new one without an entry here fails
`test_every_operation_has_a_matrix_entry`. Each entry's expected outcomes are also the ones the
operation serving the field declares (`kubekvm.services.rules`): `test_the_matrix_is_the_declared_rules`
fails when they differ, and `test_every_operation_declares_a_rule` when an operation of the
service layer declares no rule at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from pymongo import MongoClient

from kubekvm.authorized import Authorized
from kubekvm.graphql.schema import schema
from kubekvm.services.rules import Operations, declared
from tests.images import hostile
from tests.support.graphql import websocket_session
from tests.support.processes import Server

IDENTITIES = ("anonymous", "student", "other", "host", "owner", "admin")
OK, FORBIDDEN, NOT_FOUND, UNAUTH = "ok", "FORBIDDEN", "NOT_FOUND", "UNAUTHENTICATED"
VALIDATION_FAILED = "VALIDATION_FAILED"
# Collections a refused call may (must) write to, and the janitor's lease, which the server
# renews on its own clock whatever requests come.
WRITTEN_BY_REFUSALS = {"audit_log", "login_throttle", "leases"}
HOST = "mx-host"
LAB = "mx-lab"  # owned by "ta"; machines mx-lab-1 (student "stu") and mx-lab-2 ("stu2", no password)
USERS = {"student": "stu", "other": "tb", "owner": "ta", "admin": "admin"}


def outcomes(anonymous: str = UNAUTH, student: str = FORBIDDEN, other: str = FORBIDDEN, host: str = FORBIDDEN,
             owner: str = FORBIDDEN, admin: str = OK) -> dict[str, str]:
    return {"anonymous": anonymous, "student": student, "other": other, "host": host, "owner": owner,
            "admin": admin}


STAFF_READ = outcomes(other=OK, owner=OK)
USER_READ = outcomes(student=OK, other=OK, owner=OK)
OWNED_LAB = outcomes(other=NOT_FOUND, owner=OK)
OWN_MACHINE = outcomes(student=OK, other=NOT_FOUND, owner=OK)
HOST_AGENT = outcomes(host=OK)
ADMIN_ONLY = outcomes()
EVERYONE = outcomes(anonymous=OK, student=OK, other=OK, host=OK, owner=OK)


@dataclass
class Context:
    server: Server
    tokens: dict[str, str | None]
    machine_ids: dict[str, str] = field(default_factory=dict)
    counter: int = 0
    image_digest: str = ""

    def admin(self, query: str, **variables: Any) -> dict[str, Any]:
        body = self.server.graphql(query, variables)
        assert not body.get("errors"), body
        result: dict[str, Any] = body["data"]
        return result

    def as_(self, who: str, query: str, **variables: Any) -> dict[str, Any]:
        body = self.server.graphql(query, variables, token=self.tokens[who])
        assert not body.get("errors"), body
        result: dict[str, Any] = body["data"]
        return result

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"


Setup = Callable[[Context, str], dict[str, Any]]


@dataclass(frozen=True)
class Entry:
    query: str
    expected: dict[str, str]
    variables: Setup = lambda ctx, who: {}
    subscription: bool = False


def _lab_of_ta(ctx: Context, prefix: str) -> str:
    name = ctx.fresh(prefix)
    ctx.as_("owner", "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }",
            i={"name": name, "template": "mx-tpl", "replicas": 1})
    return name


def _template(ctx: Context, prefix: str) -> str:
    name = ctx.fresh(prefix)
    ctx.admin("mutation($i: TemplateInput!) { createTemplate(input: $i) { name } }",
              i={"name": name, "image": "nowhere.qcow2", "memoryMib": 128, "diskGib": 1})
    return name


def _versioned_template(ctx: Context) -> str:
    """A template with two versions, the first used by nothing (retiring it garbage-collects
    nothing: the image is the matrix's shared one, still used by v2)."""
    name = _template(ctx, "versioned-tpl")
    for _ in range(2):
        ctx.admin("mutation($n: String!, $d: String!) { publishTemplateVersion(name: $n, digest: $d) { name } }",
                  n=name, d=ctx.image_digest)
    return name


def _stopped_machine(ctx: Context) -> str:
    """A machine of ta's that its host reported stopped: one that may be published."""
    lab = ctx.fresh("pub-lab")
    ctx.as_("owner", "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }",
            i={"name": lab, "template": "mx-tpl", "replicas": 1, "power": "STOPPED"})
    (machine,) = ctx.admin(f'{{ machines(deployment: "{lab}") {{ id host }} }}')["machines"]
    assert machine["host"] == HOST
    ctx.admin("mutation($i: MachineReportInput!) { reportMachineState(input: $i) { name } }",
              i={"machineId": machine["id"], "host": HOST, "state": "SHUTOFF"})
    return f"{lab}-1"


def _token_of_ta(ctx: Context) -> str:
    made = ctx.as_("owner", 'mutation { createApiToken(label: "to revoke") { apiToken { id } } }')
    return str(made["createApiToken"]["apiToken"]["id"])


def _fresh_user(ctx: Context) -> dict[str, Any]:
    """A new teacher account (made by the admin) for an administering call to act on."""
    name = ctx.fresh("adm-user")
    ctx.admin('mutation($n: String!) { createUser(input: {name: $n, role: TEACHER}) { name } }', n=name)
    return {"n": name}


def _password_change(ctx: Context, who: str) -> dict[str, Any]:
    """The caller's current password and a new one (remembered: the call is expected to work
    for everyone with a password)."""
    name = USERS.get(who, "")
    current = ctx.server.passwords.get(name, "not-a-password")
    new = f"{ctx.fresh('changed')}-password"
    if name in ctx.server.passwords:
        ctx.server.passwords[name] = new
    return {"c": current, "n": new}


MATRIX: dict[str, Entry] = {
    # ------------------------------------------------------------------ queries
    "templates": Entry("{ templates { name } }", STAFF_READ),
    "template": Entry('{ template(name: "mx-tpl") { name } }', STAFF_READ),
    "deployments": Entry("{ deployments { total items { name } } }", USER_READ),
    "deployment": Entry(f'{{ deployment(name: "{LAB}") {{ name }} }}', outcomes(student=OK, other=NOT_FOUND, owner=OK)),
    "machines": Entry("{ machines { name } }", USER_READ),
    "hosts": Entry("{ hosts { name } }", STAFF_READ),
    "serverInfo": Entry("{ serverInfo { version } }", EVERYONE),
    "operationsOverview": Entry("{ operationsOverview { hostsReady } }", ADMIN_ONLY),
    "me": Entry("{ me { kind name role } }", EVERYONE),
    "users": Entry("{ users { name } }", ADMIN_ONLY),
    "userPage": Entry('{ userPage(role: TEACHER, disabled: false, text: "t") { total items { name } } }', ADMIN_ONLY),
    "apiTokens": Entry("{ apiTokens { label } }", USER_READ),
    "auditLog": Entry("{ auditLog { total } }", ADMIN_ONLY),
    "images": Entry("{ images { digest } }", ADMIN_ONLY),
    "timetable": Entry(f'{{ timetable(name: "{LAB}") {{ timeZone nextStart }} }}',
                       outcomes(student=OK, other=NOT_FOUND, owner=OK)),
    "unusedLabs": Entry("{ unusedLabs { name } }", ADMIN_ONLY),
    # Every student's hours for the lab's teacher; a student's own for a student.
    "labUsage": Entry(f'{{ labUsage(name: "{LAB}") {{ student remainingHours }} }}',
                      outcomes(student=OK, other=NOT_FOUND, owner=OK)),
    # ---------------------------------------------------------------- mutations
    "createTemplate": Entry(
        "mutation($i: TemplateInput!) { createTemplate(input: $i) { name } }", ADMIN_ONLY,
        lambda ctx, who: {"i": {"name": ctx.fresh("tpl"), "image": "x.qcow2", "memoryMib": 128, "diskGib": 1}}),
    "updateTemplate": Entry('mutation { updateTemplate(name: "mx-tpl", input: {title: "MX"}) { name } }', ADMIN_ONLY),
    "deleteTemplate": Entry("mutation($n: String!) { deleteTemplate(name: $n) { name } }", ADMIN_ONLY,
                            lambda ctx, who: {"n": _template(ctx, "gone-tpl")}),
    "publishTemplateVersion": Entry("mutation($d: String!) { publishTemplateVersion(name: \"mx-tpl\", digest: $d) "
                                    "{ name } }", ADMIN_ONLY, lambda ctx, who: {"d": ctx.image_digest}),
    "retireTemplateVersion": Entry("mutation($n: String!) { retireTemplateVersion(name: $n, version: 1) { name } }",
                                   ADMIN_ONLY, lambda ctx, who: {"n": _versioned_template(ctx)}),
    "moveDeploymentToVersion": Entry(f'mutation {{ moveDeploymentToVersion(name: "{LAB}", version: 1) {{ name }} }}',
                                     OWNED_LAB),
    "publishMachine": Entry("mutation($n: String!) { publishMachine(name: $n) { name } }", OWNED_LAB,
                            lambda ctx, who: {"n": _stopped_machine(ctx)}),
    "createDeployment": Entry(
        "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }", outcomes(other=OK, owner=OK),
        lambda ctx, who: {"i": {"name": ctx.fresh("new-lab"), "template": "mx-tpl", "replicas": 1}}),
    "updateDeployment": Entry(f'mutation {{ updateDeployment(name: "{LAB}", input: {{title: "MX lab"}}) {{ name }} }}',
                              OWNED_LAB),
    # A session far ahead: the scheduler must not fire anything while refusals are compared.
    "setTimetable": Entry(f'mutation {{ setTimetable(name: "{LAB}", input: {{sessions: [{{date: "2030-01-07", '
                          'start: "09:00", end: "10:00"}]}) { nextStart } }', OWNED_LAB),
    "startDeployment": Entry(f'mutation {{ startDeployment(name: "{LAB}") {{ name }} }}', OWNED_LAB),
    "stopDeployment": Entry(f'mutation {{ stopDeployment(name: "{LAB}") {{ name }} }}', OWNED_LAB),
    "deleteDeployment": Entry("mutation($n: String!) { deleteDeployment(name: $n) { name } }", OWNED_LAB,
                              lambda ctx, who: {"n": _lab_of_ta(ctx, "gone-lab")}),
    "setRoster": Entry("mutation($n: String!) { setRoster(name: $n, students: [\"stu3\"]) { unbound } }", OWNED_LAB,
                       lambda ctx, who: {"n": _lab_of_ta(ctx, "roster-lab")}),
    # This server has no directory: the owner and admins are told so (tests/identity/test_ldap.py has one).
    "fillRosterFromGroup": Entry(
        'mutation($n: String!) { fillRosterFromGroup(name: $n, group: "redes-2026") { unbound } }',
        outcomes(other=NOT_FOUND, owner=VALIDATION_FAILED, admin=VALIDATION_FAILED),
        lambda ctx, who: {"n": _lab_of_ta(ctx, "group-lab")}),
    "setUsagePolicy": Entry(f'mutation {{ setUsagePolicy(name: "{LAB}", input: {{quotaHours: 500}}) '
                            '{ quotaHours } }', OWNED_LAB),
    "grantUsageHours": Entry(f'mutation {{ grantUsageHours(name: "{LAB}", student: "stu", hours: 1) '
                             '{ remainingHours } }', OWNED_LAB),
    "startMachine": Entry(f'mutation {{ startMachine(name: "{LAB}-1") {{ name }} }}', OWN_MACHINE),
    "stopMachine": Entry(f'mutation {{ stopMachine(name: "{LAB}-1") {{ name }} }}', OWN_MACHINE),
    "resetMachine": Entry(f'mutation {{ resetMachine(name: "{LAB}-1") {{ name }} }}', OWN_MACHINE),
    "registerHost": Entry(
        "mutation($i: RegisterHostInput!) { registerHost(input: $i) { name } }", HOST_AGENT,
        lambda ctx, who: {"i": {"name": HOST, "vcpus": 8, "memoryMib": 16384, "images": ["mx.qcow2"]}}),
    "heartbeat": Entry(f'mutation {{ heartbeat(input: {{name: "{HOST}"}}) {{ name }} }}', HOST_AGENT),
    "reportMachineState": Entry(
        "mutation($i: MachineReportInput!) { reportMachineState(input: $i) { name } }", HOST_AGENT,
        lambda ctx, who: {"i": {"machineId": ctx.machine_ids[f"{LAB}-1"], "host": HOST, "state": "RUNNING"}}),
    "reportMachineStates": Entry(
        "mutation($i: MachineStateReportsInput!) { reportMachineStates(input: $i) { machineId accepted } }",
        HOST_AGENT,
        lambda ctx, who: {"i": {"host": HOST, "reports": [{"machineId": ctx.machine_ids[f"{LAB}-1"],
                                                           "state": "RUNNING"}]}}),
    "reportOrphans": Entry(f'mutation {{ reportOrphans(input: {{host: "{HOST}", domains: []}}) {{ name }} }}',
                           HOST_AGENT),
    "createUser": Entry("mutation($i: UserInput!) { createUser(input: $i) { name } }", ADMIN_ONLY,
                        lambda ctx, who: {"i": {"name": ctx.fresh("user"), "role": "TEACHER"}}),
    # Someone else's password: an admin's act only (a teacher setting a rostered student's
    # password could sign in as them: see test_a_teacher_cannot_take_over_a_students_account).
    "setUserPassword": Entry('mutation { setUserPassword(name: "mx-pw", password: "another-long-one") { name } }',
                             ADMIN_ONLY),
    # One's own, with the current one (the bootstrap admin has none, so theirs cannot match).
    "changePassword": Entry("mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, "
                            "newPassword: $n) { name } }",
                            outcomes(student=OK, other=OK, owner=OK, admin=VALIDATION_FAILED),
                            lambda ctx, who: _password_change(ctx, who)),
    "endUserSessions": Entry('mutation { endUserSessions(name: "stu") }', ADMIN_ONLY),
    "disableUser": Entry("mutation($n: String!) { disableUser(name: $n) { disabled } }", ADMIN_ONLY,
                         lambda ctx, who: _fresh_user(ctx)),
    "enableUser": Entry("mutation($n: String!) { enableUser(name: $n) { disabled } }", ADMIN_ONLY,
                        lambda ctx, who: _fresh_user(ctx)),
    "setUserRole": Entry("mutation($n: String!) { setUserRole(name: $n, role: STUDENT) { role } }", ADMIN_ONLY,
                         lambda ctx, who: _fresh_user(ctx)),
    "deleteUser": Entry("mutation($n: String!) { deleteUser(name: $n) { name } }", ADMIN_ONLY,
                        lambda ctx, who: _fresh_user(ctx)),
    # A first-time link for a student of the teacher's own lab who has no password yet.
    "createPasswordLink": Entry('mutation { createPasswordLink(name: "stu2") }', outcomes(other=NOT_FOUND, owner=OK)),
    "createApiToken": Entry('mutation { createApiToken(label: "m") { apiToken { label } } }', USER_READ),
    "createScrapeToken": Entry('mutation { createScrapeToken(label: "prom") { apiToken { label } } }', ADMIN_ONLY),
    "createHostToken": Entry(f'mutation {{ createHostToken(host: "{HOST}") {{ apiToken {{ label }} }} }}', ADMIN_ONLY),
    "revokeApiToken": Entry("mutation($id: ID!) { revokeApiToken(id: $id) { label } }",
                            outcomes(student=NOT_FOUND, other=NOT_FOUND, owner=OK),
                            lambda ctx, who: {"id": _token_of_ta(ctx)}),
    # ------------------------------------------------------------ subscriptions
    "deploymentEvents": Entry(f'subscription {{ deploymentEvents(name: "{LAB}") {{ kind lab }} }}',
                              outcomes(student=OK, other=NOT_FOUND, owner=OK), subscription=True),
    "hostAssignments": Entry(f'subscription {{ hostAssignments(host: "{HOST}") {{ kind assignments {{ vmName }} }} }}',
                             HOST_AGENT, subscription=True),
    # Not even an admin: console requests are the host agent's alone.
    "consoleRequests": Entry(f'subscription {{ consoleRequests(host: "{HOST}") {{ session url }} }}',
                             outcomes(host=OK, admin=FORBIDDEN), subscription=True),
}


def dump(server: Server) -> dict[str, list[dict[str, Any]]]:
    with MongoClient(server.database_uri) as client:
        db = client[server.database_name]
        return {name: sorted(db[name].find(), key=lambda d: str(d["_id"]))
                for name in sorted(db.list_collection_names()) if name not in WRITTEN_BY_REFUSALS}


@pytest.fixture(scope="module")
def ctx(start_kubekvm: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory) -> Context:
    store = tmp_path_factory.mktemp("matrix-images")
    server = start_kubekvm(env={"KUBEKVM_IMAGE_STORE": str(store)})
    tokens: dict[str, str | None] = {
        "anonymous": None,
        "student": server.token_for("stu", "student"),
        "other": server.token_for("tb", "teacher"),
        "owner": server.token_for("ta", "teacher"),
        "admin": server.admin_token,
        "host": server.host_token(HOST),
    }
    context = Context(server=server, tokens=tokens)
    context.admin("mutation($i: RegisterHostInput!) { registerHost(input: $i) { name } }",
                  i={"name": HOST, "vcpus": 8, "memoryMib": 16384, "images": ["mx.qcow2"]})
    context.admin("mutation($i: TemplateInput!) { createTemplate(input: $i) { name } }",
                  i={"name": "mx-tpl", "image": "mx.qcow2", "memoryMib": 128, "diskGib": 1})
    context.as_("owner", "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }",
                i={"name": LAB, "template": "mx-tpl", "replicas": 2})
    # An image of the store, and mx-tpl's first version made of it (the lab can move onto v1).
    image = hostile.qcow2(store.parent / "matrix.qcow2")
    imported = httpx.post(f"{server.url}/images", content=image.read_bytes(), timeout=60,
                          headers={**server.admin_headers, "X-Image-Name": image.name})
    assert imported.status_code == 200, imported.text
    context.image_digest = imported.json()["digest"]
    context.admin('mutation($d: String!) { publishTemplateVersion(name: "mx-tpl", digest: $d) { name } }',
                  d=context.image_digest)
    context.as_("owner", f'mutation {{ setRoster(name: "{LAB}", students: ["stu", "stu2"]) {{ unbound }} }}')
    server.user("mx-pw", "student")
    for machine in context.admin(f'{{ machines(deployment: "{LAB}") {{ id name student host }} }}')["machines"]:
        context.machine_ids[machine["name"]] = machine["id"]
        assert machine["host"] == HOST
    return context


def test_every_operation_has_a_matrix_entry() -> None:
    graphql_schema = schema._schema
    operations = {name for kind in (graphql_schema.query_type, graphql_schema.mutation_type,
                                    graphql_schema.subscription_type) if kind is not None for name in kind.fields}
    assert operations == set(MATRIX), (
        f"missing: {sorted(operations - set(MATRIX))}; stale: {sorted(set(MATRIX) - operations)}")


def undeclared(cls: type) -> list[str]:
    """The public methods of `cls`'s operations classes that declare no rule."""
    missing = []
    for owner in cls.__mro__:
        if not issubclass(owner, Operations) or owner in (Operations, cls):
            continue
        for name, member in vars(owner).items():
            if not name.startswith("_") and callable(member) and declared(member) is None:
                missing.append(f"{owner.__name__}.{name}")
    return missing


def test_every_operation_declares_a_rule() -> None:
    assert not undeclared(Authorized), "operations without a rule (declare one with @operation or @stream)"
    assert [c for c in Authorized.__mro__ if issubclass(c, Operations)][1:-1], "no operations found"


def test_an_operation_without_a_rule_is_caught() -> None:
    class Sneaky(Operations):
        async def drop_everything(self) -> None:
            return None

    class Assembled(Sneaky):
        pass

    assert undeclared(Assembled) == ["Sneaky.drop_everything"]


def test_the_matrix_is_the_declared_rules() -> None:
    """Every field of the schema is served by one operation declaring it, whose rule's outcomes
    are the matrix's expectations for that field."""
    serving: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for name in dir(Authorized):
        found = declared(getattr(Authorized, name))
        if found is not None and found.field in MATRIX:
            serving.setdefault(found.field, []).append((name, found.outcomes))
    assert sorted(serving) == sorted(MATRIX), f"fields no operation declares: {sorted(set(MATRIX) - set(serving))}"
    for field_name, entry in MATRIX.items():
        assert len(serving[field_name]) == 1, f"{field_name} is declared by {serving[field_name]}"
        operation, declared_outcomes = serving[field_name][0]
        assert declared_outcomes == entry.expected, f"{field_name} ({operation}) declares {declared_outcomes}"


def _code(errors: list[dict[str, Any]] | None) -> str:
    if not errors:
        return OK
    return str((errors[0].get("extensions") or {}).get("code"))


async def _subscribe(ctx: Context, who: str, entry: Entry) -> str:
    token = ctx.tokens[who]
    async with websocket_session(ctx.server.ws_url, token) as session:
        results: list[dict[str, Any]] = []

        async def follow() -> None:
            async for result in session.subscribe(GraphQLRequest(entry.query)):
                results.append(result)
                return

        task = asyncio.create_task(follow())
        # A refusal comes at once. An allowed subscriber of changes hears the next one, but
        # graphql-transport-ws does not say when the server has registered it: the change is
        # made again until the subscriber hears one.
        await asyncio.wait({task}, timeout=0.3)
        for poke in range(30):
            if task.done():
                break
            if "deploymentEvents" in entry.query:
                # An allowed subscriber hears the next change of the lab.
                await asyncio.to_thread(ctx.admin, f'mutation {{ updateDeployment(name: "{LAB}", '
                                                   f'input: {{title: "MX {who} {poke}"}}) {{ name }} }}')
            elif "consoleRequests" in entry.query:
                # An allowed subscriber hears of the next console asked of its host.
                await asyncio.to_thread(_request_console, ctx)
            else:
                break
            await asyncio.wait({task}, timeout=0.3)
        try:
            await asyncio.wait_for(task, timeout=60)  # generous: a loaded machine answers late
        except TransportQueryError as error:
            return _code(error.errors)
        assert results, "an allowed subscription sent nothing"
        return OK


def _request_console(ctx: Context) -> None:
    """A console session waiting for the host's agent, as a replica writes one."""
    now = datetime.now(UTC)
    with MongoClient(ctx.server.database_uri) as client:
        client[ctx.server.database_name]["console_sessions"].insert_one({
            "session": f"mx-{ctx.fresh('console')}", "machine": f"{LAB}-1", "machine_id": ctx.machine_ids[f"{LAB}-1"],
            "deployment": LAB, "index": 1, "host": HOST, "user": "stu", "replica": ctx.server.url,
            "state": "requested", "opened_at": now, "lease_until": now + timedelta(seconds=60)})


@pytest.mark.parametrize("operation", sorted(MATRIX))
async def test_matrix(ctx: Context, operation: str) -> None:
    entry = MATRIX[operation]
    # Refusals first, each against an unchanged database; then the allowed calls.
    order = sorted(IDENTITIES, key=lambda who: entry.expected[who] == OK)
    seen: dict[str, str] = {}
    for who in order:
        variables = await asyncio.to_thread(entry.variables, ctx, who)
        refused = entry.expected[who] != OK
        before = await asyncio.to_thread(dump, ctx.server) if refused else None
        if entry.subscription:
            seen[who] = await _subscribe(ctx, who, entry)
        else:
            body = await asyncio.to_thread(ctx.server.graphql, entry.query, variables, token=ctx.tokens[who])
            seen[who] = _code(body.get("errors"))  # type: ignore[arg-type]
        if before is not None:
            assert await asyncio.to_thread(dump, ctx.server) == before, f"{operation} as {who} changed the database"
    assert seen == entry.expected


def test_a_teacher_cannot_take_over_a_students_account(ctx: Context) -> None:
    """The takeover path: teacher tb rosters students of teacher ta's lab onto a lab of their own,
    then tries to give themselves a student's password (directly, or with a set-password link)
    and reach the student's machine in ta's lab. Rostering is allowed (students take several
    courses) and grants nothing; every later step is refused, and nothing is written."""
    # A student of ta's who has no password yet, and ta's first-time link for them.
    fresh_lab = ctx.fresh("take-a")
    ctx.as_("owner", "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }",
            i={"name": fresh_lab, "template": "mx-tpl", "replicas": 1})
    ctx.as_("owner", 'mutation($n: String!) { setRoster(name: $n, students: ["stu4"]) { unbound } }', n=fresh_lab)
    link = ctx.as_("owner", 'mutation { createPasswordLink(name: "stu4") }')["createPasswordLink"]
    # tb rosters stu (who has a password) and stu4 onto a lab of tb's.
    theirs = ctx.fresh("take-b")
    ctx.as_("other", "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }",
            i={"name": theirs, "template": "mx-tpl", "replicas": 2})
    ctx.as_("other", 'mutation($n: String!) { setRoster(name: $n, students: ["stu", "stu4"]) { unbound } }', n=theirs)
    before = dump(ctx.server)
    tb = ctx.tokens["other"]
    steps = {
        'mutation { setUserPassword(name: "stu", password: "taken-over-pw") { name } }': FORBIDDEN,
        'mutation { setUserPassword(name: "stu4", password: "taken-over-pw") { name } }': FORBIDDEN,
        'mutation { createPasswordLink(name: "stu") }': FORBIDDEN,  # stu has a password
        'mutation { createPasswordLink(name: "stu4") }': FORBIDDEN,  # stu4 is on ta's lab too
        'mutation { endUserSessions(name: "stu") }': FORBIDDEN,
        f'mutation {{ startMachine(name: "{LAB}-1") {{ name }} }}': NOT_FOUND,
        f'mutation {{ resetMachine(name: "{LAB}-1") {{ name }} }}': NOT_FOUND,
        f'mutation {{ stopMachine(name: "{LAB}-1") {{ name }} }}': NOT_FOUND,
    }
    seen = {query: _code(ctx.server.graphql(query, token=tb).get("errors")) for query in steps}  # type: ignore[arg-type]
    assert seen == steps
    bearer = {"Authorization": f"Bearer {tb}"}
    # The same through the pages: the roster's link button, and the machine's console.
    assert httpx.post(f"{ctx.server.url}/labs/{theirs}/roster/stu/link", headers={**bearer, "HX-Request": "true"},
                      timeout=30).status_code == 403
    assert httpx.get(f"{ctx.server.url}/machines/{LAB}-1/console", headers=bearer, timeout=30).status_code == 404
    assert httpx.post(f"{ctx.server.url}/machines/{LAB}-1/console/ticket", headers={**bearer, "HX-Request": "true"},
                      timeout=30).status_code == 404
    # The link ta made before stu4 was on tb's lab no longer works: whoever holds it (ta, say)
    # could otherwise set stu4's password and reach stu4's machine in tb's lab.
    assert httpx.get(f"{ctx.server.url}{link}", timeout=30).status_code == 404
    form = httpx.get(f"{ctx.server.url}/login", timeout=30)
    csrf = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    used = httpx.post(f"{ctx.server.url}/set-password", cookies=form.cookies, timeout=30,
                      data={"code": link.split("code=", 1)[1], "password": "taken-over-pw",
                            "again": "taken-over-pw", "csrf_token": csrf})
    # (A refused form post goes back with the reason; a used link would go on to /login.)
    assert used.status_code == 303 and used.headers["location"] != "/login"
    after = dump(ctx.server)
    assert after == before, [name for name in set(before) | set(after) if before.get(name) != after.get(name)]
    # An admin can still help stu4.
    assert _code(ctx.server.graphql('mutation { createPasswordLink(name: "stu4") }').get("errors")) == OK  # type: ignore[arg-type]
    # (tb's roster goes back to none, so the other tests see stu on ta's lab alone.)
    ctx.as_("other", 'mutation($n: String!) { setRoster(name: $n, students: []) { unbound } }', n=theirs)


def test_lists_show_only_what_the_caller_may_see(ctx: Context) -> None:
    other_lab = ctx.fresh("tb-lab")
    ctx.as_("other", "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name owner } }",
            i={"name": other_lab, "template": "mx-tpl", "replicas": 1})
    mine = {d["name"] for d in ctx.as_("owner", "{ deployments(limit: 1000) { items { name } } }")["deployments"]["items"]}
    theirs = {d["name"] for d in ctx.as_("other", "{ deployments(limit: 1000) { items { name } } }")["deployments"]["items"]}
    assert LAB in mine and other_lab not in mine
    assert theirs == {other_lab} | {n for n in theirs if n.startswith(("new-lab", "take-b"))}
    # A total counted apart from its page (more labs follow it) counts only what the caller sees.
    for who, seen in (("owner", mine), ("other", theirs)):
        assert ctx.as_(who, "{ deployments(limit: 1) { total } }")["deployments"]["total"] == len(seen), who
    assert LAB not in theirs
    student = ctx.as_("student", "{ deployments { items { name roster } } machines { name student } }")
    assert [d["name"] for d in student["deployments"]["items"]] == [LAB]
    assert student["deployments"]["items"][0]["roster"] == []  # not who else is in it
    assert student["machines"] == [{"name": f"{LAB}-1", "student": "stu"}]
    owner_machines = {m["name"] for m in ctx.as_("owner", "{ machines { name } }")["machines"]}
    assert {f"{LAB}-1", f"{LAB}-2"} <= owner_machines and not any(m.startswith(other_lab) for m in owner_machines)
    # Another student's machine, and another teacher's lab, do not exist for them.
    for who, query in (("student", f'mutation {{ resetMachine(name: "{LAB}-2") {{ name }} }}'),
                       ("other", f'{{ deployment(name: "{LAB}") {{ name }} }}'),
                       ("other", f'mutation {{ stopMachine(name: "{LAB}-1") {{ name }} }}')):
        body = ctx.server.graphql(query, token=ctx.tokens[who])
        assert _code(body.get("errors")) == NOT_FOUND, (who, query, body)  # type: ignore[arg-type]


async def test_a_host_token_acts_for_its_own_host_only(ctx: Context) -> None:
    ctx.admin('mutation { registerHost(input: {name: "kvm-other", vcpus: 2, memoryMib: 2048, images: []}) { name } }')
    host = ctx.tokens["host"]
    for query in ('mutation { heartbeat(input: {name: "kvm-other"}) { name } }',
                  'mutation { registerHost(input: {name: "kvm-other", vcpus: 2, memoryMib: 2048, images: []}) { name } }',
                  'mutation { reportOrphans(input: {host: "kvm-other", domains: ["x"]}) { name } }'):
        assert _code(ctx.server.graphql(query, token=host).get("errors")) == FORBIDDEN  # type: ignore[arg-type]
    async with websocket_session(ctx.server.ws_url, host) as session:
        with pytest.raises(TransportQueryError) as refused:
            async for _ in session.subscribe(GraphQLRequest('subscription { hostAssignments(host: "kvm-other") { kind } }')):
                pass
        assert _code(refused.value.errors) == FORBIDDEN


@pytest.mark.parametrize(("in_header", "in_init"), [(True, False), (False, True)])
async def test_websocket_token_in_the_header_or_in_connection_init(ctx: Context, in_header: bool,
                                                                     in_init: bool) -> None:
    async with websocket_session(ctx.server.ws_url, ctx.tokens["host"], in_header=in_header, in_init=in_init) as s:
        async for result in s.subscribe(GraphQLRequest(f'subscription {{ hostAssignments(host: "{HOST}") {{ kind }} }}')):
            assert result["hostAssignments"]["kind"] == "SNAPSHOT"
            break


async def test_a_bad_token_is_refused_not_taken_for_anonymous(ctx: Context) -> None:
    answer = httpx.post(ctx.server.graphql_url, json={"query": "{ serverInfo { version } }"},
                        headers={"Authorization": "Bearer kk_not-a-real-token"})
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["extensions"]["code"] == UNAUTH
    with pytest.raises(Exception):  # noqa: B017 (the handshake, or connection_init, is refused)
        async with websocket_session(ctx.server.ws_url, "kk_not-a-real-token", in_header=False) as session:
            await session.execute(GraphQLRequest("{ serverInfo { version } }"))
    revoked = ctx.as_("owner", 'mutation { createApiToken(label: "short-lived") { token apiToken { id } } }')
    token = revoked["createApiToken"]["token"]
    assert _code(ctx.server.graphql("{ me { name } }", token=token).get("errors")) == OK  # type: ignore[arg-type]
    ctx.as_("owner", "mutation($id: ID!) { revokeApiToken(id: $id) { label } }",
            id=revoked["createApiToken"]["apiToken"]["id"])
    assert httpx.post(ctx.server.graphql_url, json={"query": "{ me { name } }"},
                      headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_graphql_limits_have_codes(ctx: Context) -> None:
    aliases = "{ " + " ".join(f"a{i}: serverInfo {{ version }}" for i in range(40)) + " }"
    assert _code(ctx.server.graphql(aliases).get("errors")) == "QUERY_TOO_COMPLEX"  # type: ignore[arg-type]
    deep = "{ deployments { items { machines { name } } } }"
    assert _code(ctx.server.graphql(deep).get("errors")) == OK  # type: ignore[arg-type]
    # (The schema has no recursive types, so the depth limit of 10 cannot be reached by a valid query.)
    too_long = "{ " + "serverInfo { version } " * 1500 + "}"
    assert _code(ctx.server.graphql(too_long).get("errors")) == "QUERY_TOO_COMPLEX"  # type: ignore[arg-type]


def test_introspection_can_be_switched_off_and_graphiql_needs_a_sign_in(
        ctx: Context, start_kubekvm: Callable[..., Server]) -> None:
    assert _code(ctx.server.graphql("{ __schema { queryType { name } } }").get("errors")) == OK  # type: ignore[arg-type]
    closed = start_kubekvm(env={"KUBEKVM_GRAPHQL_INTROSPECTION": "0"})
    assert _code(closed.graphql("{ __schema { queryType { name } } }").get("errors")) == FORBIDDEN  # type: ignore[arg-type]
    assert _code(closed.graphql("{ serverInfo { version } }", token=None).get("errors")) == OK  # type: ignore[arg-type]
    closed.stop()
    page = httpx.get(ctx.server.graphql_url, headers={"Accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/graphql"
    signed_in = httpx.get(ctx.server.graphql_url, headers={"Accept": "text/html", **ctx.server.admin_headers})
    assert signed_in.status_code == 200 and "graphiql" in signed_in.text.lower()
