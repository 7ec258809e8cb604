"""The sign-in settings as a sysadmin writes them (`kubekvm.identity_config`): several OpenID
providers, secrets from files, and a clear refusal to start for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubekvm.domain import Role
from kubekvm.identity_config import IdentitySettings

TWO = {"KUBEKVM_OIDC_PROVIDERS": "keycloak, entra-id",
       "KUBEKVM_OIDC_KEYCLOAK_ISSUER": "https://sso.uni.example/realms/uni",
       "KUBEKVM_OIDC_KEYCLOAK_CLIENT_ID": "kubekvm", "KUBEKVM_OIDC_KEYCLOAK_ROLES": "/staff=teacher",
       "KUBEKVM_OIDC_ENTRA_ID_ISSUER": "https://login.microsoftonline.com/t/v2.0",
       "KUBEKVM_OIDC_ENTRA_ID_CLIENT_ID": "abc", "KUBEKVM_OIDC_ENTRA_ID_SCOPES": "profile",
       "KUBEKVM_OIDC_ENTRA_ID_TITLE": "Microsoft", "KUBEKVM_OIDC_ENTRA_ID_DEFAULT_ROLE": "none"}


def test_several_providers_each_with_its_own_settings(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    settings = IdentitySettings.from_environment({**TWO, "KUBEKVM_OIDC_KEYCLOAK_CLIENT_SECRET_FILE": str(secret)})
    keycloak, entra = settings.oidc
    assert (keycloak.name, keycloak.title, keycloak.client_secret) == ("keycloak", "Keycloak", "s3cret")
    assert keycloak.discovery_url == "https://sso.uni.example/realms/uni/.well-known/openid-configuration"
    assert keycloak.roles.groups == (("/staff", Role.TEACHER),) and keycloak.roles.default == Role.STUDENT
    assert (entra.name, entra.title, entra.scopes, entra.roles.default) == ("entra-id", "Microsoft",
                                                                          "openid profile", None)
    assert settings.local_passwords and settings.ldap is None


@pytest.mark.parametrize(("change", "said"), [
    ({"KUBEKVM_OIDC_KEYCLOAK_ISSUER": ""}, "KUBEKVM_OIDC_KEYCLOAK_ISSUER must be set"),
    ({"KUBEKVM_OIDC_PROVIDERS": "Key Cloak"}, "is not a name"),
    ({"KUBEKVM_OIDC_KEYCLOAK_ROLES": "staff"}, "GROUP=ROLE"),
    ({"KUBEKVM_OIDC_KEYCLOAK_DEFAULT_ROLE": "boss"}, "DEFAULT_ROLE must be"),
    ({"KUBEKVM_OIDC_KEYCLOAK_CLIENT_SECRET_FILE": "/nonexistent/secret"}, "cannot read"),
    ({"KUBEKVM_LDAP_URL": "ldap.uni.example"}, "must start with ldap:// or ldaps://"),
    ({"KUBEKVM_LDAP_URL": "ldap://x", "KUBEKVM_LDAP_USER_BASE": "dc=x", "KUBEKVM_LDAP_USER_FILTER": "(uid=*)"},
     "must contain {username}"),
    ({"KUBEKVM_LDAP_URL": "ldap://x"}, "KUBEKVM_LDAP_USER_BASE must be set"),
])
def test_a_mistake_in_the_settings_stops_the_server_saying_which(change: dict[str, str], said: str) -> None:
    with pytest.raises(SystemExit, match=said.replace("{", r"\{").replace("}", r"\}")):
        IdentitySettings.from_environment({**TWO, **change})
