"""Password login against an LDAP directory (OpenLDAP, Active Directory) with ldap3.

One login: find the user's entry with the service account (or anonymously), bind as that entry's DN with the
password on a fresh connection, then read the user's groups over the service connection. ldap3 is blocking, so
the whole exchange runs on a worker thread and the event loop only awaits its result.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from ldap3 import NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from sso.base import Authenticator, AuthError, DirectoryUnavailable, Identity, InvalidCredentials
from sso.config import LdapSettings

log = logging.getLogger("sso.ldap")

# LDAP result codes this module branches on (RFC 4511, appendix A).
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4
_INVALID_CREDENTIALS = 49

# Bound for a name that cannot be a user's: binding to it costs the directory about what a real bind costs.
_DECOY_RDN = "cn=smartwork-vdi-no-such-user"


@dataclass(frozen=True)
class _UserEntry:
    dn: str
    username: str
    display_name: str


class LdapAuthenticator(Authenticator):
    """Checks a user name and password against the directory described by `LdapSettings`."""

    def __init__(self, settings: LdapSettings, max_workers: int = 8) -> None:
        self.settings = settings
        # ldap3 sends the receive timeout to setsockopt(SO_RCVTIMEO) packed as whole seconds; a float breaks it.
        self._receive_timeout = max(1, math.ceil(settings.timeout_s))
        # A pool of our own: a slow directory then queues logins here instead of starving the loop's default
        # executor, which other blocking work (libvirt) shares.
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sso-ldap")

    def __repr__(self) -> str:
        return f"LdapAuthenticator(url={self.settings.url!r}, bind_dn={self.settings.bind_dn!r})"

    def close(self) -> None:
        """Release the worker threads; logins already running finish on their own timeouts."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _authenticate(self, username: str, password: str) -> Identity:
        loop = asyncio.get_running_loop()
        try:
            identity = await loop.run_in_executor(self._executor, self._login, username, password)
        except AuthError as exc:
            level = logging.WARNING if isinstance(exc, DirectoryUnavailable) else logging.INFO
            log.log(level, "password login refused for %r: %s", username, exc.reason)
            raise
        log.info("password login of %r as %s, groups %s", identity.username, identity.dn, identity.groups)
        return identity

    # --- on the worker thread -------------------------------------------------------------------------------

    def _login(self, username: str, password: str) -> Identity:
        if not password:
            # RFC 4513 §5.1.2: a simple bind with a DN and an empty password is an "unauthenticated" bind, which
            # some servers (Active Directory) answer with success. The base class refuses it too; never rely on
            # a single check for this.
            raise InvalidCredentials("empty password")
        with self._directory_errors(password), self._service_connection() as service:
            user = self._find_user(service, username, password)
            self._check_password(user.dn, password)
            groups = self._groups_of(service, user.dn)
        return Identity(username=user.username, display_name=user.display_name, dn=user.dn, groups=groups)

    def _find_user(self, service: Connection, username: str, password: str) -> _UserEntry:
        s = self.settings
        query = f"(&(objectClass={s.user_object_class})({s.user_attr}={escape_filter_chars(username)}))"
        # Two results are enough to tell "exactly one" from "ambiguous".
        entries = self._search(service, s.user_base, query, [s.user_attr, s.display_name_attr], size_limit=2)
        if len(entries) != 1:
            # Spend a bind anyway so that "no such user" takes as long as "wrong password" (enumeration).
            self._bind(f"{_DECOY_RDN},{s.user_base}", password)
            reason = f"ambiguous user: {len(entries)} or more entries" if entries else "unknown user"
            raise InvalidCredentials(reason)
        return self._user_entry(entries[0], username)

    def _user_entry(self, entry: dict, username: str) -> _UserEntry:
        attributes = entry["attributes"]
        names = _values(attributes, self.settings.user_attr)
        # uid may hold several values and matches case-insensitively: report the one that was typed, as stored.
        typed = [name for name in names if name.casefold() == username.casefold()]
        stored = (typed or names or [username])[0]
        display_name = next(iter(_values(attributes, self.settings.display_name_attr)), stored)
        return _UserEntry(dn=entry["dn"], username=stored, display_name=display_name)

    def _check_password(self, dn: str, password: str) -> None:
        result = self._bind(dn, password)
        if result["result"] == _SUCCESS:
            return
        if result["result"] == _INVALID_CREDENTIALS:
            raise InvalidCredentials("wrong password")
        # Locked, expired or disabled accounts: the server's words for the log, the generic answer for the user.
        detail = f"{result['description']} {result.get('message') or ''}".strip()
        raise InvalidCredentials(f"bind refused: {detail}")

    def _groups_of(self, service: Connection, dn: str) -> list[str]:
        s = self.settings
        query = f"(&(objectClass={s.group_object_class})({s.group_member_attr}={escape_filter_chars(dn)}))"
        entries = self._search(service, s.group_base, query, [s.group_name_attr])
        names = {
            name.lower() for entry in entries for name in _values(entry["attributes"], s.group_name_attr)
        }
        return sorted(names)

    # --- ldap3 plumbing -------------------------------------------------------------------------------------

    def _bind(self, dn: str, password: str) -> dict:
        """Simple bind on a fresh connection, so the service connection keeps its own identity."""
        with self._connection(dn, password) as connection:
            connection.bind()
            return connection.result

    @contextmanager
    def _service_connection(self) -> Iterator[Connection]:
        s = self.settings
        secret = s.bind_password.get_secret_value() if s.bind_password else None
        with self._connection(s.bind_dn, secret) as connection:
            if s.bind_dn and not connection.bind():
                description = connection.result["description"]
                raise DirectoryUnavailable(f"service bind as {s.bind_dn} to {s.url} refused: {description}")
            yield connection

    @contextmanager
    def _connection(self, dn: str | None, password: str | None) -> Iterator[Connection]:
        # Certificates are checked for ldaps:// (ldap3 does not by default); referrals are not followed, so the
        # password goes to no server but the configured one.
        server = Server(
            self.settings.url,
            connect_timeout=self.settings.timeout_s,
            get_info=NONE,
            tls=Tls(validate=ssl.CERT_REQUIRED),
        )
        connection = Connection(
            server,
            user=dn,
            password=password,
            read_only=True,
            auto_referrals=False,
            receive_timeout=self._receive_timeout,
        )
        try:
            connection.open()
            yield connection
        finally:
            connection.unbind()

    def _search(
        self, connection: Connection, base: str, query: str, attributes: list[str], size_limit: int = 0
    ) -> list[dict]:
        connection.search(
            base,
            query,
            search_scope=SUBTREE,
            attributes=attributes,
            size_limit=size_limit,
            time_limit=self._receive_timeout,
        )
        result = connection.result
        if result["result"] not in (_SUCCESS, _SIZE_LIMIT_EXCEEDED):
            # A wrong base DN or missing rights: a configuration problem, not the user's.
            url, description = self.settings.url, result["description"]
            raise DirectoryUnavailable(f"search under {base} on {url} failed: {description}")
        return [entry for entry in connection.response or [] if entry.get("type") == "searchResEntry"]

    @contextmanager
    def _directory_errors(self, password: str) -> Iterator[None]:
        """Turn ldap3's network and protocol errors into DirectoryUnavailable naming the server."""
        try:
            yield
        except LDAPException as exc:
            hidden = [password]
            if self.settings.bind_password:
                hidden.append(self.settings.bind_password.get_secret_value())
            detail = _redact(f"{type(exc).__name__}: {exc}", hidden)
            # `from None`: the reason carries the detail, redacted; the original must not ride along in tracebacks.
            raise DirectoryUnavailable(f"directory {self.settings.url} unavailable: {detail}") from None


def _values(attributes: dict, name: str) -> list[str]:
    """An attribute's values as strings: ldap3 without schema gives lists, with schema sometimes a scalar."""
    value = attributes.get(name)
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _redact(text: str, secrets: list[str]) -> str:
    """ldap3's messages are not ours to vouch for: mask any secret that might appear in one."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
