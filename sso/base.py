"""The identity a login proves, the errors every login method raises, and the password-check contract.

The login-method contract itself (password, certificate, …) is `sso.login.LoginMethod`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Identity:
    username: str
    display_name: str
    dn: str = ""
    groups: list[str] = field(default_factory=list)


class AuthError(Exception):
    """Login refused. `public_message` goes to the user; `reason` goes to the log and audit only.

    Neither ever holds a password.
    """

    status = 401
    public_message = "The user name or password is incorrect."

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidCredentials(AuthError):
    """Unknown user, wrong password, disabled account: one answer for all, to resist enumeration."""


class DirectoryUnavailable(AuthError):
    status = 503
    public_message = "The directory is unavailable. Please try again shortly."


class Authenticator(ABC):
    """A directory that checks passwords (sso/ldap.py); password login (sso/password.py) runs over one.

    Template: `authenticate` validates input, then calls the hook; subclasses implement the hook.
    """

    method = "password"

    async def authenticate(self, username: str, password: str) -> Identity:
        username = (username or "").strip()
        if not username or not password:
            raise InvalidCredentials("empty user name or password")
        if len(username) > 128 or len(password) > 1024:
            raise InvalidCredentials("user name or password too long")
        return await self._authenticate(username, password)

    @abstractmethod
    async def _authenticate(self, username: str, password: str) -> Identity:
        """Verify the credentials against the directory and return the identity with groups."""
