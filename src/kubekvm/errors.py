"""Errors of the domain, each with the code that GraphQL and the pages show.

Services raise these; adapters translate them (GraphQL `extensions.code`, a form message
beside the field) and never see a database or libvirt exception.
"""

from __future__ import annotations


class KubeKVMError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationFailed(KubeKVMError):
    """One field refused; `suggestion` is a value that would pass, where one can be derived
    (a name typed with capitals or spaces)."""

    code = "VALIDATION_FAILED"

    def __init__(self, field: str, message: str, *, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.suggestion = suggestion


class FieldErrors(ValidationFailed):
    """Several fields refused at once, so a person or a client fixes them all in one go. It is a
    ValidationFailed about the first field, so a caller that shows one message still shows one;
    `errors` holds every field's (GraphQL answers one error per field, a form a message beside
    each)."""

    def __init__(self, errors: list[ValidationFailed]) -> None:
        first = errors[0]
        super().__init__(first.field, first.message, suggestion=first.suggestion)
        self.errors = errors


def each_field(error: ValidationFailed) -> list[ValidationFailed]:
    """Every field a refusal is about, one error each."""
    return list(error.errors) if isinstance(error, FieldErrors) else [error]


class NotFound(KubeKVMError):
    code = "NOT_FOUND"


class Conflict(KubeKVMError):
    code = "CONFLICT"


class Unavailable(KubeKVMError):
    code = "UNAVAILABLE"


class Unauthenticated(KubeKVMError):
    """No identity, or one that is not good (an unknown or revoked token)."""

    code = "UNAUTHENTICATED"


class Forbidden(KubeKVMError):
    """A known identity that may not do this (where saying so does not leak that it exists)."""

    code = "FORBIDDEN"


class Throttled(KubeKVMError):
    """Too many failed sign-ins; `retry_after` seconds until the next try is heard."""

    code = "THROTTLED"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MachineOff(Conflict):
    """A console asked of a machine that is not running (the page offers to start it)."""

    code = "MACHINE_OFF"


class HostUnreachable(Unavailable):
    """The machine's host has not been heard from, or its agent did not answer."""

    code = "HOST_UNREACHABLE"


class TooManyConsoles(KubeKVMError):
    """The user has as many consoles open as one person may."""

    code = "TOO_MANY_CONSOLES"


class TooManySubscriptions(KubeKVMError):
    """The user (or the websocket) holds as many live streams or subscriptions as allowed."""

    code = "TOO_MANY_SUBSCRIPTIONS"


class QuotaSpent(Conflict):
    """A machine asked to start outside the lab's scheduled hours by a student whose hours of
    use are spent (`kubekvm.usage`); the lab's teacher can grant more."""

    code = "QUOTA_SPENT"
