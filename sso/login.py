"""The login-method contract: every way of logging in (password, certificate, …) is one `LoginMethod`.

JupyterHub's Authenticator is the model: `login` is the one public outer method, and subclasses do not
override it; it calls small hooks in a fixed order:

    authenticate(credentials, audit) → normalize(identity) → is_blocked / is_allowed → Login

Only `authenticate` and `name` are required; both are checked when a subclass is defined. A refusal
is an `AuthError` (sso/base.py), whose public message is the same for an unknown user and a wrong
secret. Lockout, the second factor, portal sessions and audit records are the broker's business
(broker/auth.py), applied the same way to every method.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sso.base import Identity, InvalidCredentials

# Portal sessions store the method in 32 characters, "+totp" included (broker/db/models.py).
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,26}$")


@dataclass(frozen=True)
class Login:
    """A login a method accepted: who, their groups, how, and what the audit records (never a secret)."""

    identity: Identity
    method: str
    audit: dict[str, str] = field(default_factory=dict)

    @property
    def username(self) -> str:
        return self.identity.username

    @property
    def groups(self) -> list[str]:
        return list(self.identity.groups)


class LoginMethod(ABC):
    """One way of logging in, chosen by `name` in `[broker] login_methods` (sso/methods.py)."""

    name: ClassVar[str]
    # Whether a refusal counts towards the lockout of the user name and source address, and a lock is
    # checked before the method sees the credentials: true where a secret can be guessed (a password, a
    # code), false where it cannot (a certificate's private key).
    counts_failures: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "login" in cls.__dict__:
            raise TypeError(f"{cls.__name__} must not override login(); implement its hooks instead")
        if getattr(cls.authenticate, "__isabstractmethod__", False):
            # Caught where the plugin is written, not at the first login after a deployment.
            raise TypeError(f"{cls.__name__} must implement authenticate(credentials, audit)")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not NAME.match(name):
            raise TypeError(f"{cls.__name__}.name must match {NAME.pattern}, not {name!r}")

    @classmethod
    def from_config(cls, config: Any, directory: Any) -> LoginMethod:
        """The method as `vdi broker` builds it: `config` is the broker's whole configuration, `directory`
        the shared LDAP authenticator (for methods that look users up). Override when the method needs them."""
        return cls()

    async def login(self, credentials: Any, audit: dict[str, str] | None = None) -> Login:
        """The template: authenticate, normalize, refuse blocked or not-allowed users, answer a Login.

        `audit` collects what the hooks learn for the audit record, also when the login is refused.
        """
        audit = {} if audit is None else audit
        identity = self.normalize(await self.authenticate(credentials, audit))
        if self.is_blocked(identity):
            raise InvalidCredentials(f"{self.name} login of {identity.username!r} refused: user is blocked")
        if not self.is_allowed(identity):
            raise InvalidCredentials(f"{self.name} login of {identity.username!r} refused: user not allowed")
        return Login(identity, self.name, dict(audit))

    @abstractmethod
    async def authenticate(self, credentials: Any, audit: dict[str, str]) -> Identity:
        """The user the credentials prove, with groups; AuthError when they prove none.

        Blocking libraries run on an executor. Facts for the audit (a certificate's serial) go into
        `audit`; secrets never do.
        """

    def username_of(self, credentials: Any) -> str:
        """The user name the credentials claim before they are checked (lockout, audit); '' when none."""
        return ""

    def normalize(self, identity: Identity) -> Identity:
        return identity

    def is_blocked(self, identity: Identity) -> bool:
        return False

    def is_allowed(self, identity: Identity) -> bool:
        return True

    def close(self) -> None:  # noqa: B027 - an optional hook: most methods hold nothing to release
        """Release what the method holds (threads, connections); the broker calls it at stop."""
