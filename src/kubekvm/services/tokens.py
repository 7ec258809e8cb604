"""API and host tokens as a caller may use them: a person makes, lists and revokes their own;
admins see everyone's and make hosts' (the records are `kubekvm.services.accounts`')."""

from __future__ import annotations

from kubekvm import access
from kubekvm.errors import NotFound
from kubekvm.models import ApiToken, TokenKind
from kubekvm.services.hosts import host_name
from kubekvm.services.rules import (
    ADMIN,
    NOT_FOUND,
    OK,
    SIGNED_IN,
    Arguments,
    Operations,
    Rule,
    named,
    operation,
    outcomes,
    own,
)


async def _lister(ops: Operations, args: Arguments) -> None:
    access.require_user(ops.actor)
    if args["everyone"]:
        access.require_admin(ops.actor)


async def _revoker(ops: Operations, args: Arguments) -> None:
    access.require_user(ops.actor)
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
        host_name(host)
        return await self.accounts.create_token(kind=TokenKind.HOST, owner=host, label=label,
                                                created_by=self.actor.name)

    @operation(TOKEN_REVOKER, audit="revokeApiToken", target=named("token", "token_id"))
    async def revoke_token(self, token_id: str) -> ApiToken:
        return await self.accounts.revoke_token(token_id)
