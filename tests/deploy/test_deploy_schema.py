"""Every rendered object is valid against the Kubernetes API schemas.

kubernetes-validate bundles the OpenAPI-derived JSON schemas of each Kubernetes release it
supports (nothing is downloaded): we check the newest one it ships and the oldest release the
manifests promise to support, in strict mode, so a misspelt or misplaced field fails too.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes_validate import utils as kubernetes_validate
from packaging.version import Version

# The oldest Kubernetes the manifests are written for (autoscaling/v2, policy/v1, batch/v1
# CronJob, topology spread and the fields used here all exist there).
OLDEST_SUPPORTED = "1.30.0"
VERSIONS = (kubernetes_validate.latest_version(), OLDEST_SUPPORTED)


def schema_errors(objects: tuple[dict[str, Any], ...], version: str) -> list[str]:
    errors = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(part) for part in error.path)
            errors.append(f"{name}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{name}: {error.message}")
    return errors


def test_the_newest_bundled_schemas_are_a_current_release() -> None:
    # The point of validating is a current cluster: fail when the installed validator is old.
    assert Version(kubernetes_validate.latest_version()) >= Version("1.33.0")


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_for_kubernetes(manifests, version: str) -> None:
    assert manifests.objects, f"{manifests.overlay} rendered nothing"
    assert schema_errors(manifests.objects, version) == []


def test_the_validator_rejects_a_misspelt_field(dev) -> None:
    # Guards against a validator that passes everything (a wrong kind, a lax mode).
    deployment = copy.deepcopy(dev.one("Deployment", "kubekvm"))
    deployment["spec"]["replica"] = 2
    errors = schema_errors((deployment,), kubernetes_validate.latest_version())
    assert len(errors) == 1 and "replica" in errors[0]
