"""API, host and scrape tokens: their records, and what a caller may do with them — a person makes,
lists and revokes their own; admins see everyone's and make hosts' and Prometheus' (a scrape
token reads /metrics and nothing else, `kubekvm.metrics`).

A token is returned once, when it is made; only its sha256 (and its first characters, to tell
tokens apart) is kept, so the sign-in middleware (`kubekvm.auth`) finds whom a bearer token
speaks for by its hash (`actor_for_token`), on any replica. Revoking is deleting the record.
`TokenRecords` are the writes, unchecked (gathered in `accounts.Accounts`); `TokenOperations`
declare their rules.
"""

from __future__ import annotations

from typing import Any

from kubekvm import credentials, validation
from kubekvm.access.actors import Actor, ActorKind
from kubekvm.access.roles import require_admin, require_user
from kubekvm.errors import NotFound
from kubekvm.models import ApiToken, TokenKind
from kubekvm.services.context import object_id
from kubekvm.services.hosts import host_name
from kubekvm.services.rulebook import ADMIN, SIGNED_IN
from kubekvm.services.rules import NOT_FOUND, OK, Arguments, Operations, Rule, named, operation, outcomes, own
from kubekvm.services.sessions import SessionRecords

TOKEN_LABEL_MAX = 80
_PREFIXES = {TokenKind.USER: credentials.USER_TOKEN_PREFIX, TokenKind.HOST: credentials.HOST_TOKEN_PREFIX,
             TokenKind.SCRAPE: credentials.SCRAPE_TOKEN_PREFIX}


class TokenRecords(SessionRecords):
    """API and host tokens' records (`find_user`, to resume a user's token, is `SessionRecords`')."""

    async def create_token(self, *, kind: TokenKind, owner: str, label: str,
                           created_by: str) -> tuple[ApiToken, str]:
        """A new token and its record; the token itself is returned here and never again."""
        label = validation.text(label, field="label", label="A token's label", max_length=TOKEN_LABEL_MAX)
        token = credentials.new_token(_PREFIXES[kind])
        record = ApiToken(kind=kind, owner=owner, label=label or f"{kind.value} token",
                          token_hash=credentials.token_hash(token), prefix=token[:8],
                          created_by=created_by)
        await record.insert()
        return record, token

    async def list_tokens(self, *, kind: TokenKind | None = None, owner: str | None = None) -> list[ApiToken]:
        query: dict[str, Any] = {}
        if kind is not None:
            query["kind"] = kind.value
        if owner is not None:
            query["owner"] = owner
        return await ApiToken.find(query).sort("owner", "created_at").to_list()

    async def get_token(self, token_id: str) -> ApiToken:
        record = await ApiToken.get(object_id(token_id, what="token"))
        if record is None:
            raise NotFound(f"There is no token with id {token_id!r}.")
        return record

    async def revoke_token(self, token_id: str) -> ApiToken:
        record = await self.get_token(token_id)
        await record.delete()
        return record

    async def actor_for_token(self, token: str, *, address: str) -> Actor | None:
        """Who a bearer token speaks for, or None if it is unknown or revoked (or its user is
        gone or disabled: read on every request, so a disabling holds at the next one)."""
        record = await ApiToken.find_one(ApiToken.token_hash == credentials.token_hash(token))
        if record is None:
            return None
        if record.kind == TokenKind.HOST:
            return Actor(kind=ActorKind.HOST, name=record.owner, address=address, via="token")
        if record.kind == TokenKind.SCRAPE:
            return Actor(kind=ActorKind.SCRAPER, name=record.owner, address=address, via="token")
        user = await self.find_user(record.owner)
        if user is None or user.disabled:
            return None
        return Actor(kind=ActorKind.USER, name=user.name, role=user.role, address=address, via="token")


async def _lister(ops: Operations, args: Arguments) -> None:
    require_user(ops.actor)
    if args["everyone"]:
        require_admin(ops.actor)


async def _revoker(ops: Operations, args: Arguments) -> None:
    require_user(ops.actor)
    record = await ops.accounts.get_token(args["token_id"])
    mine = record.kind == TokenKind.USER and record.owner == ops.actor.name
    if not (mine or ops.actor.is_admin):
        raise NotFound(f"There is no token with id {args['token_id']!r}.")


TOKEN_LISTER = Rule("anyone signed in, their own; admins, everyone's", _lister, SIGNED_IN.outcomes)
# The matrix's token is the owning teacher's: to anyone else it does not exist.
TOKEN_REVOKER = Rule("the token's owner, and admins", _revoker,
                     outcomes(student=NOT_FOUND, other=NOT_FOUND, owner=OK))


class TokenOperations(Operations):
    @operation(TOKEN_LISTER, field="apiTokens")
    async def list_tokens(self, *, everyone: bool = False) -> list[ApiToken]:
        if everyone:
            return await self.accounts.list_tokens()
        return await self.accounts.list_tokens(kind=TokenKind.USER, owner=self.actor.name)

    @operation(ADMIN)
    async def host_tokens(self) -> list[ApiToken]:
        return await self.accounts.list_tokens(kind=TokenKind.HOST)

    @operation(SIGNED_IN, audit="createApiToken", target=own("user"))
    async def create_token(self, *, label: str) -> tuple[ApiToken, str]:
        return await self.accounts.create_token(kind=TokenKind.USER, owner=self.actor.name, label=label,
                                                created_by=self.actor.name)

    @operation(ADMIN, audit="createHostToken", target=named("host", "host"))
    async def create_host_token(self, *, host: str, label: str = "") -> tuple[ApiToken, str]:
        checks = validation.Checks()  # a bad host name and a bad label, both at once
        checks(lambda: host_name(host, field="host"))
        checks(lambda: validation.text(label, field="label", label="A token's label", max_length=TOKEN_LABEL_MAX))
        checks.done()
        return await self.accounts.create_token(kind=TokenKind.HOST, owner=host, label=label,
                                                created_by=self.actor.name)

    @operation(ADMIN, audit="createScrapeToken", target=named("token", "label"))
    async def create_scrape_token(self, *, label: str = "") -> tuple[ApiToken, str]:
        """A token for Prometheus: it reads /metrics on every replica and can do nothing else."""
        return await self.accounts.create_token(kind=TokenKind.SCRAPE, owner="metrics", label=label or "metrics",
                                                created_by=self.actor.name)

    @operation(TOKEN_REVOKER, audit="revokeApiToken", target=named("token", "token_id"))
    async def revoke_token(self, token_id: str) -> ApiToken:
        return await self.accounts.revoke_token(token_id)
