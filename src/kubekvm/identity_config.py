"""The sign-in settings: OpenID Connect providers, the LDAP directory, and whether local
passwords are accepted — read from the environment once, like `kubekvm.config`'s.

Several OpenID providers: `KUBEKVM_OIDC_PROVIDERS=keycloak,entra` names them, and each has its
`KUBEKVM_OIDC_<NAME>_...` settings (the name upper-cased, '-' as '_'). A secret can be given in
a file instead (`..._FILE`), as Kubernetes mounts them. The README's settings table lists them all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubekvm.domain import Role
from kubekvm.identity import RoleRules, parse_names, parse_role_map

_PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


@dataclass(frozen=True, kw_only=True)
class OidcProvider:
    """One OpenID provider: discovered from its issuer, our client there, what we ask for,
    and how its people get roles."""

    name: str  # in URLs: /login/oidc/<name>
    title: str  # the button: "Sign in with <title>"
    issuer: str
    client_id: str
    client_secret: str
    scopes: str = "openid profile email"
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    roles: RoleRules = field(default_factory=RoleRules)

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True, kw_only=True)
class LdapDirectory:
    """The LDAP directory people sign in against: found by a search (as `bind_dn`, or
    anonymously) under `user_base` with `user_filter` ({username} is replaced by the escaped
    name typed), then proved by binding as the entry found with the password typed."""

    url: str  # ldap://host:389 or ldaps://host:636
    start_tls: bool = False
    # Check the server's certificate (ldaps or StartTLS) against these CAs (None: the system's).
    tls_verify: bool = True
    ca_file: Path | None = None
    bind_dn: str = ""
    bind_password: str = ""
    user_base: str = ""
    user_filter: str = "(&(objectClass=inetOrgPerson)(uid={username}))"
    username_attribute: str = "uid"
    group_base: str = ""
    group_filter: str = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))"
    roles: RoleRules = field(default_factory=RoleRules)
    # Each directory call (connect, bind, search) ends within this.
    timeout_seconds: float = 10.0


@dataclass(frozen=True, kw_only=True)
class IdentitySettings:
    # Off: the sign-in form accepts no password kept here (only the directory's, or a provider's button).
    local_passwords: bool = True
    oidc: tuple[OidcProvider, ...] = ()
    ldap: LdapDirectory | None = None
    # Every request to an OpenID provider (discovery, keys, token, userinfo) ends within this.
    oidc_timeout_seconds: float = 10.0

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> IdentitySettings:
        env = os.environ if env is None else env
        names = [n.strip().lower() for n in env.get("KUBEKVM_OIDC_PROVIDERS", "").split(",") if n.strip()]
        return cls(local_passwords=env.get("KUBEKVM_LOCAL_PASSWORDS", "1") != "0",
                   oidc=tuple(_provider(env, name) for name in names),
                   ldap=_ldap(env) if env.get("KUBEKVM_LDAP_URL") else None,
                   oidc_timeout_seconds=_number(env, "KUBEKVM_OIDC_TIMEOUT", 10.0))


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name) or ""
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


def _secret(env: Mapping[str, str], name: str) -> str:
    """A secret, from the variable or from the file `<name>_FILE` names."""
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as error:
            raise SystemExit(f"{name}_FILE: cannot read {path}: {error.strerror}") from None
    return env.get(name, "")


def _role_rules(env: Mapping[str, str], prefix: str) -> RoleRules:
    raw_default = env.get(f"{prefix}_DEFAULT_ROLE", "student").strip().lower()
    try:
        default = None if raw_default in ("", "none") else Role(raw_default)
    except ValueError:
        raise SystemExit(f"{prefix}_DEFAULT_ROLE must be admin, teacher, student or none") from None
    return RoleRules(groups=parse_role_map(env.get(f"{prefix}_ROLES", ""), setting=f"{prefix}_ROLES"),
                     admins=parse_names(env.get(f"{prefix}_ADMINS", "")), default=default)


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SystemExit(f"{name} must be set")
    return value


def _provider(env: Mapping[str, str], name: str) -> OidcProvider:
    if not _PROVIDER_NAME.fullmatch(name):
        raise SystemExit(f"KUBEKVM_OIDC_PROVIDERS: {name!r} is not a name of lowercase letters, digits and '-'")
    prefix = f"KUBEKVM_OIDC_{name.upper().replace('-', '_')}"
    scopes = env.get(f"{prefix}_SCOPES", "openid profile email")
    if "openid" not in scopes.split():
        scopes = f"openid {scopes}"
    return OidcProvider(
        name=name, title=env.get(f"{prefix}_TITLE", name.capitalize()), issuer=_required(env, f"{prefix}_ISSUER"),
        client_id=_required(env, f"{prefix}_CLIENT_ID"), client_secret=_secret(env, f"{prefix}_CLIENT_SECRET"),
        scopes=scopes, username_claim=env.get(f"{prefix}_USERNAME_CLAIM", "preferred_username"),
        groups_claim=env.get(f"{prefix}_GROUPS_CLAIM", "groups"), roles=_role_rules(env, prefix))


def _ldap(env: Mapping[str, str]) -> LdapDirectory:
    prefix = "KUBEKVM_LDAP"
    url = env[f"{prefix}_URL"]
    if not url.startswith(("ldap://", "ldaps://")):
        raise SystemExit(f"{prefix}_URL must start with ldap:// or ldaps://, got {url!r}")
    ca = env.get(f"{prefix}_CA_FILE")
    defaults = LdapDirectory(url=url)
    if "{username}" not in (env.get(f"{prefix}_USER_FILTER") or defaults.user_filter):
        raise SystemExit(f"{prefix}_USER_FILTER must contain {{username}} (where the name typed goes, escaped)")
    return LdapDirectory(
        url=url, start_tls=env.get(f"{prefix}_START_TLS", "0") == "1",
        tls_verify=env.get(f"{prefix}_TLS_VERIFY", "1") != "0", ca_file=Path(ca) if ca else None,
        bind_dn=env.get(f"{prefix}_BIND_DN", ""), bind_password=_secret(env, f"{prefix}_BIND_PASSWORD"),
        user_base=_required(env, f"{prefix}_USER_BASE"),
        user_filter=env.get(f"{prefix}_USER_FILTER") or defaults.user_filter,
        username_attribute=env.get(f"{prefix}_USERNAME_ATTRIBUTE") or defaults.username_attribute,
        group_base=env.get(f"{prefix}_GROUP_BASE") or env[f"{prefix}_USER_BASE"],
        group_filter=env.get(f"{prefix}_GROUP_FILTER") or defaults.group_filter,
        roles=_role_rules(env, prefix), timeout_seconds=_number(env, f"{prefix}_TIMEOUT", 10.0))
