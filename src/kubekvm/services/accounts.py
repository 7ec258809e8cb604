"""Accounts: the records of people, gathered in one object — users and their passwords
(`users`), set-password links (`links`), API and host tokens (`tokens`), sessions and sign-in
(`sessions`), the session-signing key and the first admin (`server`), people an LDAP
directory or an OpenID provider vouches for (`identities`), and administering accounts
(`user_admin`: disable, role, delete, the paged list).

`Accounts` decides nothing about who may do what: the operations callers use are `users`' and
`tokens`' (each declaring its rule), the sign-in middleware (`kubekvm.auth`) resumes sessions
and tokens through it, and the audit log is `audit`'s. Each part is its own noun's module; this
one only puts them together, so that one `Accounts` made at the server's start serves them all.
"""

from __future__ import annotations

from kubekvm.services.identities import IdentityRecords
from kubekvm.services.links import PasswordLinks
from kubekvm.services.server import ServerStart
from kubekvm.services.tokens import TokenRecords
from kubekvm.services.user_admin import UserAdminRecords


class Accounts(IdentityRecords, PasswordLinks, ServerStart, TokenRecords, UserAdminRecords):
    """People's records: users and passwords, set-password links, tokens, the first admin,
    sessions and sign-in, and people from outside."""
