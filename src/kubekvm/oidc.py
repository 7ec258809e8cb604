"""Sign-in with OpenID Connect providers (authlib): the authorization code flow with PKCE.

`OpenIdSignIn.start` sends the browser to the provider with a fresh `state`, `nonce` and PKCE
`code_verifier`; authlib keeps them in this browser's pre-sign-in session (the signed cookie of
`kubekvm.auth`), so any replica can finish the flow. `finish`, on the callback:
- refuses a `state` this browser did not start (or already used): MismatchingStateError;
- exchanges the code (with the verifier) at the token endpoint: a code used before is the
  provider's to refuse (`invalid_grant`);
- validates the ID token: its signature against the provider's published keys, `iss` equal to
  the configured issuer, `aud` containing our client id (asked for explicitly: authlib's
  default only checks `azp`), `exp` and `iat` (two minutes' leeway for clocks), and the `nonce`;
- adds the userinfo endpoint's claims (many providers keep groups there), refusing any whose
  `sub` differs from the ID token's.
Every request to a provider is httpx2's async client (authlib's) with a timeout, so none blocks the loop or
hangs a sign-in; a provider that cannot be reached is `Unavailable`.

What the person is then allowed as (their account and role) is `kubekvm.services.identities`'.

authlib and its HTTP client are imported only where a provider is used: most servers configure
none, and the import was a tenth of every server's start-up.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from kubekvm import identity
from kubekvm.errors import NotFound, Unauthenticated, Unavailable
from kubekvm.identity import ExternalIdentity
from kubekvm.identity_config import IdentitySettings, OidcProvider

if TYPE_CHECKING:
    from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App

log = logging.getLogger(__name__)
# Clocks of the provider and of this server may differ this much (seconds).
LEEWAY_SECONDS = 120


class OpenIdSignIn:
    """The configured OpenID providers, and the two halves of signing in with one."""

    def __init__(self, settings: IdentitySettings) -> None:
        self.providers = {p.name: p for p in settings.oidc}
        self.oauth: OAuth | None = None
        if not settings.oidc:
            return
        from authlib.integrations.starlette_client import OAuth

        self.oauth = OAuth()
        for p in settings.oidc:
            self.oauth.register(name=p.name, client_id=p.client_id, client_secret=p.client_secret,
                                server_metadata_url=p.discovery_url,
                                client_kwargs={"scope": p.scopes, "code_challenge_method": "S256",
                                               "timeout": settings.oidc_timeout_seconds})

    def provider(self, name: str) -> OidcProvider:
        found = self.providers.get(name)
        if found is None:
            raise NotFound(f"There is no sign-in provider named {name!r}.")
        return found

    def _client(self, name: str) -> StarletteOAuth2App:
        self.provider(name)
        assert self.oauth is not None  # a provider is configured
        client: StarletteOAuth2App = self.oauth.create_client(name)
        return client

    async def discover(self, name: str) -> dict[str, Any]:
        """The provider's discovery document (fetched once), its issuer checked."""
        import httpx2 as httpx

        provider = self.provider(name)
        try:
            metadata: dict[str, Any] = await self._client(name).load_server_metadata()
        except (httpx.HTTPError, ValueError) as error:
            log.warning("OpenID provider %s: discovery at %s failed: %s", name, provider.discovery_url, error)
            raise Unavailable(f"{provider.title} cannot be reached now; try again later.") from None
        if metadata.get("issuer") != provider.issuer:
            raise Unavailable(f"{provider.title} is not configured right here (its issuer is "
                              f"{metadata.get('issuer')!r}, not {provider.issuer!r}); tell an admin.")
        return metadata

    async def start(self, request: Request, name: str, *, redirect_uri: str) -> Response:
        """The redirect to the provider's authorization endpoint."""
        import httpx2 as httpx

        await self.discover(name)
        try:
            response: Response = await self._client(name).authorize_redirect(request, redirect_uri)
        except httpx.HTTPError:
            raise Unavailable(f"{self.provider(name).title} cannot be reached now; try again later.") from None
        return response

    async def finish(self, request: Request, name: str) -> ExternalIdentity:
        """The person the provider vouches for on this callback; Unauthenticated with the reason
        when anything about the answer is wrong."""
        import httpx2 as httpx
        from authlib.common.errors import AuthlibBaseError
        from authlib.integrations.base_client import MismatchingStateError, OAuthError
        from joserfc.errors import JoseError

        provider = self.provider(name)
        metadata = await self.discover(name)
        client = self._client(name)
        options = {"iss": {"essential": True, "value": metadata["issuer"]},
                   "aud": {"essential": True, "value": provider.client_id},
                   "exp": {"essential": True}, "iat": {"essential": True}}
        try:
            token = await client.authorize_access_token(request, claims_options=options, leeway=LEEWAY_SECONDS)
            claims = dict(token.get("userinfo") or {})
            if "id_token" not in token or not claims.get("sub"):
                raise Unauthenticated(f"{provider.title} answered without an ID token; nobody is signed in.")
            if metadata.get("userinfo_endpoint"):
                more = dict(await client.userinfo(token=token))
                if more.get("sub") != claims["sub"]:
                    raise Unauthenticated(f"{provider.title}'s userinfo is about someone else; nobody is signed in.")
                claims = {**more, **claims}
        except MismatchingStateError:
            raise Unauthenticated("This sign-in was not started from this browser, or was finished already "
                                  "(its state does not match): start again.") from None
        except OAuthError as error:
            raise Unauthenticated(f"{provider.title} refused the sign-in ({error.error}"
                                  f"{': ' + error.description if error.description else ''}).") from None
        except JoseError as error:
            raise Unauthenticated(f"{provider.title}'s ID token is not valid ({error.error}: "
                                  f"{error.description}); nobody is signed in.") from None
        except AuthlibBaseError as error:
            raise Unauthenticated(f"The sign-in with {provider.title} failed ({error.error}).") from None
        except httpx.HTTPStatusError as error:
            status = error.response.status_code
            raise Unauthenticated(f"{provider.title} refused the sign-in (HTTP {status}).") from None
        except httpx.HTTPError:
            raise Unavailable(f"{provider.title} cannot be reached now; try again later.") from None
        raw_name = claims.get(provider.username_claim)
        if not isinstance(raw_name, str) or not raw_name:
            raise Unauthenticated(f"{provider.title} gave no {provider.username_claim!r} for you; tell an admin.")
        groups = claims.get(provider.groups_claim) or []
        return ExternalIdentity(key=f"oidc:{name}:{claims['sub']}", source=provider.title,
                                username=identity.account_name(raw_name, source=provider.title),
                                groups=tuple(str(g) for g in (groups if isinstance(groups, list) else [groups])))

    async def end_session_url(self, name: str, *, post_logout: str) -> str | None:
        """Where to end one's session at the provider too (RP-initiated logout), if it has that."""
        try:
            metadata = await self.discover(name)
        except (NotFound, Unavailable):
            return None
        endpoint = metadata.get("end_session_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            return None
        query = urlencode({"client_id": self.provider(name).client_id, "post_logout_redirect_uri": post_logout})
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"
