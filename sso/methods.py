"""The registry of login methods: one name per `LoginMethod` class (sso/login.py), in one place.

`[broker] login_methods` and `[totp] methods` name methods from here; the broker builds the enabled ones
with `create`. A new method is one module with its class plus one `register` call.
"""

from __future__ import annotations

from typing import Any

from monitoring.metrics import declare_login_method
from sso.cert_auth import CertificateLogin
from sso.login import LoginMethod
from sso.password import PasswordLogin

LOGIN_METHODS: dict[str, type[LoginMethod]] = {}


class UnknownLoginMethod(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown login method {self.name!r} (known: {', '.join(sorted(LOGIN_METHODS))})"


def register(cls: type[LoginMethod]) -> type[LoginMethod]:
    """Make `cls` selectable by its name; its login metric series start at zero (monitoring/metrics.py)."""
    known = LOGIN_METHODS.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"login method {cls.name!r} is already registered by {known.__name__}")
    LOGIN_METHODS[cls.name] = cls
    declare_login_method(cls.name)
    return cls


def unregister(name: str) -> None:
    LOGIN_METHODS.pop(name, None)


def method_class(name: str) -> type[LoginMethod]:
    try:
        return LOGIN_METHODS[name]
    except KeyError:
        raise UnknownLoginMethod(name) from None


def check_names(names: list[str]) -> list[str]:
    """`names` when each is registered and none repeats; ValueError naming the first that is not."""
    for index, name in enumerate(names):
        if name not in LOGIN_METHODS:
            raise ValueError(f"[{index}] {UnknownLoginMethod(name)}")
        if name in names[:index]:
            raise ValueError(f"[{index}] {name!r} is listed twice")
    return names


def create(name: str, config: Any, directory: Any) -> LoginMethod:
    return method_class(name).from_config(config, directory)


register(PasswordLogin)
register(CertificateLogin)
