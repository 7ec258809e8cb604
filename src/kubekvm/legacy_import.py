"""`kubekvm import-legacy`: the 2019 application's deployments read from its database and made
labs of a named teacher here, by the plan of `kubekvm.legacy`.

The source is only ever read: one `find` on its `deployments` collection, nothing else sent to
it (no index made, no write, no command that changes anything). Each lab is made through the
labs' own operation (`createDeployment`, audited, by the operator at the console), its source
`_id` recorded first (`course_records.LegacyImport`, keyed by that `_id`): a second run, or two
runs at once, import a deployment once. A dry run reads and reports, and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from kubekvm import legacy, validation
from kubekvm.authorized import Authorized
from kubekvm.course_records import LegacyImport
from kubekvm.errors import KubeKVMError, ValidationFailed
from kubekvm.models import Deployment, Role

SOURCE_TIMEOUT_MS = 10_000


@dataclass
class Outcome:
    source: str
    read: int
    plan: legacy.Plan
    dry_run: bool
    created: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"import-legacy: {self.read} deployment(s) read from {self.source} (read only)"]
        verb = "would create" if self.dry_run else "created"
        for planned in self.plan.labs:
            if self.dry_run or planned.lab in self.created:
                lines.append(f"{verb}: {planned.lab} from {planned.source_name!r} ({planned.template}, "
                             f"{planned.replicas} machine(s), {planned.power.value})")
        lines += self.plan.lines()
        count = len(self.plan.labs) if self.dry_run else len(self.created)
        lines.append(f"{count} lab(s) {verb}" + (" — dry run: nothing was written" if self.dry_run else "")
                     + f"; {len(self.plan.already)} already imported")
        return "\n".join(lines)


async def read_source(uri: str, *, database: str | None) -> tuple[str, list[dict[str, Any]]]:
    """The source's deployments, read once (and where from, for the report)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=SOURCE_TIMEOUT_MS, timeoutMS=SOURCE_TIMEOUT_MS, tz_aware=True)
    try:
        db = client.get_default_database(default=database or "kubekvm")
        documents = await db["deployments"].find({}).to_list(None)
        host = uri.split("@")[-1].split("/")[0].removeprefix("mongodb://")  # no password in the report
        return f"{host}/{db.name}.deployments", documents
    finally:
        await client.close()


async def run(ops: Authorized, *, source_uri: str, source_database: str | None, owner: str,
              dry_run: bool) -> Outcome:
    account = await ops.accounts.find_user(owner)
    if account is None or account.role == Role.STUDENT:
        raise ValidationFailed("owner", f"There is no teacher or admin named {owner!r}.")
    source, documents = await read_source(source_uri, database=source_database)
    templates = [t.name for t in await ops.services.templates.list_templates()]
    existing = [str(n) for n in await Deployment.get_pymongo_collection().distinct("name")]
    imported = {str(r.id): r.lab for r in await LegacyImport.find_all().to_list()}
    plan = legacy.plan(documents, templates=templates, existing=existing, imported=imported,
                       max_replicas=ops.settings.max_replicas)
    outcome = Outcome(source=source, read=len(documents), plan=plan, dry_run=dry_run)
    if dry_run:
        return outcome
    for planned in plan.labs:
        claim = LegacyImport(id=planned.key, lab=planned.lab, source_name=planned.source_name)
        try:
            await claim.insert()
        except DuplicateKeyError:  # another run imported it meanwhile
            plan.already.append(f"{planned.source_name!r}")
            continue
        try:
            await ops.create_deployment(
                name=planned.lab, template=planned.template, replicas=planned.replicas, power=planned.power,
                title=validation.note(planned.source_name, max_length=validation.TITLE_MAX_LENGTH, multiline=False),
                owner=owner)
        except KubeKVMError as error:
            await LegacyImport.get_pymongo_collection().delete_one({"_id": planned.key})
            plan.refused.append(f"{planned.source_name!r} as {planned.lab}: {error.message}")
            continue
        outcome.created.append(planned.lab)
    return outcome
