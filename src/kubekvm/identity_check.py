"""`kubekvm sign-in check`: the sign-in settings tried against the real directory and providers,
before anyone depends on them — each OpenID provider's discovery (and that it names the issuer
configured), the directory's own bind, and, for a username given, who the directory says they
are and the role they would get. Nothing is written; no database is needed.
"""

from __future__ import annotations

from kubekvm import identity
from kubekvm.directory import Directory
from kubekvm.errors import KubeKVMError
from kubekvm.identity_config import IdentitySettings
from kubekvm.oidc import OpenIdSignIn


async def check(settings: IdentitySettings, *, user: str | None = None) -> tuple[bool, list[str]]:
    """Whether everything configured answered as it should, and a line per thing checked."""
    lines = [f"local passwords: {'accepted' if settings.local_passwords else 'switched off'}"]
    good = True
    oidc = OpenIdSignIn(settings)
    for provider in settings.oidc:
        try:
            metadata = await oidc.discover(provider.name)
        except KubeKVMError as error:
            good = False
            lines.append(f"oidc {provider.name}: FAILED: {error.message}")
            continue
        logout = "offers end-session" if metadata.get("end_session_endpoint") else "no end-session endpoint"
        lines.append(f"oidc {provider.name} ({provider.title}): ok, issuer {metadata['issuer']}, {logout}; "
                     f"redirect URI to register: <public URL>/login/oidc/{provider.name}/callback")
    if settings.ldap is None:
        lines.append("ldap: not configured")
        return good, lines
    directory = Directory(settings.ldap)
    try:
        person = await directory.lookup(user or "kubekvm-settings-check")
    except KubeKVMError as error:
        return False, [*lines, f"ldap {settings.ldap.url}: FAILED: {error.message}"]
    lines.append(f"ldap {settings.ldap.url}: ok (searched {settings.ldap.user_base} as "
                 f"{settings.ldap.bind_dn or 'anonymous'})")
    if user is not None and person is None:
        good = False
        lines.append(f"ldap user {user}: not found under the user filter (unknown, or left out as disabled)")
    elif user is not None and person is not None:
        role = identity.decide_role(settings.ldap.roles, username=person.username, groups=person.groups)
        lines.append(f"ldap user {user}: {person.dn}; groups: {', '.join(person.groups) or 'none'}; "
                     f"role: {role.value if role else 'none (may not sign in)'}")
    return good, lines
