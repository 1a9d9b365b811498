"""Password login: a user name and password checked by the directory (sso/ldap.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monitoring.metrics import LoginMethod as MethodLabel
from sso.base import Authenticator, Identity
from sso.login import LoginMethod


@dataclass(frozen=True)
class Password:
    username: str
    # repr=False keeps the password out of any log line or traceback that prints the credentials.
    password: str = field(repr=False)


class PasswordLogin(LoginMethod):
    """Over any password `Authenticator`: the LDAP one in production, a fake in tests."""

    name = MethodLabel.PASSWORD.value

    def __init__(self, directory: Authenticator) -> None:
        self.directory = directory

    @classmethod
    def from_config(cls, config: Any, directory: Authenticator) -> PasswordLogin:
        return cls(directory)

    async def authenticate(self, credentials: Password, audit: dict[str, str]) -> Identity:
        # The directory answers an unknown user and a wrong password alike (InvalidCredentials).
        return await self.directory.authenticate(credentials.username, credentials.password)

    def username_of(self, credentials: Password) -> str:
        return credentials.username
