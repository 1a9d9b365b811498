"""Password login against an LDAP directory (OpenLDAP, Active Directory) with ldap3.

One login: find the user's entry with the service account (or anonymously), bind as that entry's DN with the
password on a connection kept for such binds only, then read the user's groups over the service connection. ldap3 is blocking, so
the whole exchange runs on a worker thread and the event loop only awaits its result.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from ldap3 import BASE, NONE, SIMPLE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException
from ldap3.utils.conv import escape_filter_chars
from pyasn1.error import PyAsn1Error

from sso.base import Authenticator, AuthError, DirectoryUnavailable, Identity, InvalidCredentials
from sso.config import LdapSettings

log = logging.getLogger("sso.ldap")

# LDAP result codes this module branches on (RFC 4511, appendix A).
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4
_NO_SUCH_OBJECT = 32
_USER_CERTIFICATE = "userCertificate;binary"
_INVALID_CREDENTIALS = 49

# Bound for a name that cannot be a user's: binding to it costs the directory about what a real bind costs.
_DECOY_RDN = "cn=smartwork-vdi-no-such-user"


class _StaleServiceConnection(Exception):
    """A reused service connection failed on the wire: the login is retried once on a fresh one."""


@dataclass(frozen=True)
class _PooledConnection:
    connection: Connection

    def close(self) -> None:
        # Unbinding a connection the server already dropped fails on the dead socket; it is closed either way.
        with suppress(LDAPException):
            self.connection.unbind()


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
        # Bound service connections kept between logins (at most one per worker): a login then costs the
        # directory one search, one user bind and one group search, not also a TCP/TLS set-up and a bind.
        self._idle_service: list[_PooledConnection] = []
        # Connections for the users' binds (the password check), kept the same way; never used to search.
        self._idle_binders: list[_PooledConnection] = []
        self._service_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LdapAuthenticator(url={self.settings.url!r}, bind_dn={self.settings.bind_dn!r})"

    def close(self) -> None:
        """Release the worker threads; logins already running finish on their own timeouts."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._service_lock:
            idle, self._idle_service = self._idle_service + self._idle_binders, []
            self._idle_binders = []
        for pooled in idle:
            pooled.close()

    async def _authenticate(self, username: str, password: str) -> Identity:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            identity = await loop.run_in_executor(self._executor, self._login, username, password)
        except AuthError as exc:
            level = logging.WARNING if isinstance(exc, DirectoryUnavailable) else logging.INFO
            log.log(level, "password login refused for %r: %s", username, exc.reason)
            if isinstance(exc, InvalidCredentials):
                # What is left to tell "no such user" from "wrong password" (a search that found an entry or
                # none) hides under one floor: every refusal answers after refusal_floor_s at the earliest.
                await asyncio.sleep(max(0.0, self.settings.refusal_floor_s - (loop.time() - started)))
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
        with self._directory_errors(password):
            try:
                return self._login_with_service(username, password, reuse=True)
            except _StaleServiceConnection:
                # The directory restarted or dropped an idle connection: once more, on a fresh one.
                return self._login_with_service(username, password, reuse=False)

    def _login_with_service(self, username: str, password: str, reuse: bool) -> Identity:
        with self._service_connection(reuse) as service:
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
            # Spend a bind anyway so that "no such user" takes as long as "wrong password" (enumeration):
            # against a real entry when one is configured, since a missing DN skips the password check.
            self._bind(s.decoy_dn or f"{_DECOY_RDN},{s.user_base}", password)
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

    # --- lookups without a password (certificate login) --------------------------------------------------------

    async def identity_by_filter(self, query: str, certificate: bytes | None = None) -> Identity:
        """The one user entry matching `query` under user_base, with its groups; none or several → refused.

        With `certificate`, only entries whose `userCertificate;binary` holds exactly those bytes count.
        """
        return await self._lookup(self.settings.user_base, SUBTREE, query, certificate)

    async def identity_by_dn(self, dn: str) -> Identity:
        """The user entry at `dn` (it must be of the user object class), with its groups."""
        return await self._lookup(dn, BASE, "(objectClass=*)")

    async def _lookup(self, base: str, scope: str, query: str, certificate: bytes | None = None) -> Identity:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._lookup_blocking, base, scope, query, certificate
        )

    def _lookup_blocking(self, base: str, scope: str, query: str, certificate: bytes | None) -> Identity:
        s = self.settings
        query = f"(&(objectClass={s.user_object_class}){query})"
        attributes = [s.user_attr, s.display_name_attr]
        if certificate is not None:
            attributes.append(_USER_CERTIFICATE)
        with self._directory_errors(""), self._service_connection(reuse=False) as service:
            entries = self._search(service, base, query, attributes, 2, scope)
            if certificate is not None:
                entries = [e for e in entries if certificate in _raw_values(e, _USER_CERTIFICATE)]
            if len(entries) != 1:
                reason = (
                    f"ambiguous: {len(entries)} or more directory entries match"
                    if entries
                    else "no such user"
                )
                raise InvalidCredentials(reason)
            names = _values(entries[0]["attributes"], s.user_attr)
            user = self._user_entry(entries[0], names[0] if names else "")
            groups = self._groups_of(service, user.dn)
        return Identity(username=user.username, display_name=user.display_name, dn=user.dn, groups=groups)

    # --- ldap3 plumbing -------------------------------------------------------------------------------------

    def _bind(self, dn: str, password: str) -> dict:
        """Simple bind as `dn`, on a connection kept for password checks only (never searched on), so the
        service connection keeps its own identity. A kept connection is bound again for the next login:
        no TCP (and TLS) set-up and teardown per logon (vdi bench logon-storm)."""
        with self._service_lock:
            pooled = self._idle_binders.pop() if self._idle_binders else None
        if pooled is not None:
            try:
                return self._bind_on(pooled, dn, password)
            except LDAPCommunicationError:
                pass  # the directory restarted or dropped it while idle: once more, on a fresh one
        return self._bind_on(_PooledConnection(self._open_connection(dn, password)), dn, password)

    def _bind_on(self, pooled: _PooledConnection, dn: str, password: str) -> dict:
        connection = pooled.connection
        connection.authentication = SIMPLE
        connection.user, connection.password = dn, password
        try:
            connection.bind()
            result = dict(connection.result)
        except BaseException:
            pooled.close()
            raise
        finally:
            connection.password = None  # an idle connection keeps no password
        # Refused or not, the connection is fine: a refused bind leaves it anonymous until the next one.
        with self._service_lock:
            self._idle_binders.append(pooled)
        return result

    @contextmanager
    def _service_connection(self, reuse: bool = True) -> Iterator[Connection]:
        """A bound service connection for this thread alone; back to the idle list if it stayed healthy."""
        with self._service_lock:
            pooled = self._idle_service.pop() if reuse and self._idle_service else None
        reused = pooled is not None
        pooled = pooled or self._open_service()
        try:
            yield pooled.connection
        except AuthError:
            self._give_back(pooled)  # a refused login says nothing against the connection
            raise
        except LDAPCommunicationError:
            pooled.close()
            if reused:
                raise _StaleServiceConnection() from None
            raise
        except BaseException:
            pooled.close()
            raise
        self._give_back(pooled)

    def _give_back(self, pooled: _PooledConnection) -> None:
        with self._service_lock:
            self._idle_service.append(pooled)

    def _open_service(self) -> _PooledConnection:
        s = self.settings
        secret = s.bind_password.get_secret_value() if s.bind_password else None
        connection = self._open_connection(s.bind_dn, secret)
        pooled = _PooledConnection(connection)
        if s.bind_dn and not connection.bind():
            pooled.close()
            description = connection.result["description"]
            raise DirectoryUnavailable(f"service bind as {s.bind_dn} to {s.url} refused: {description}")
        return pooled

    def _open_connection(self, dn: str | None, password: str | None) -> Connection:
        # Certificates are checked for ldaps:// (ldap3 does not by default); referrals are not followed, so the
        # password goes to no server but the configured one.
        server = Server(
            self.settings.url,
            connect_timeout=self.settings.timeout_s,
            get_info=NONE,
            tls=self._tls(),
        )
        connection = Connection(
            server,
            user=dn,
            password=password,
            read_only=True,
            auto_referrals=False,
            receive_timeout=self._receive_timeout,
        )
        connection.open()
        if self.settings.start_tls and not connection.start_tls():
            connection.unbind()
            raise DirectoryUnavailable(f"StartTLS with {self.settings.url} refused: {connection.result}")
        return connection

    def _tls(self) -> Tls:
        # ldap3 checks the host name against the certificate itself once validation is required.
        ca_file = str(self.settings.ca_file) if self.settings.ca_file else None
        return Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT, ca_certs_file=ca_file)

    def _search(
        self,
        connection: Connection,
        base: str,
        query: str,
        attributes: list[str],
        size_limit: int = 0,
        scope: str = SUBTREE,
    ) -> list[dict]:
        connection.search(
            base,
            query,
            search_scope=scope,
            attributes=attributes,
            size_limit=size_limit,
            time_limit=self._receive_timeout,
        )
        result = connection.result
        if result["result"] == _NO_SUCH_OBJECT and scope == BASE:
            return []  # a mapped DN with no entry: no such user, not a broken directory
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
        except (LDAPException, PyAsn1Error, KeyError, IndexError) as exc:
            # ldap3 raises plain KeyError/IndexError (or pyasn1 errors) when a peer answers with bytes that are not
            # LDAP (something else listening on the port): that is an unavailable directory too.
            hidden = [password]
            if self.settings.bind_password:
                hidden.append(self.settings.bind_password.get_secret_value())
            detail = _redact(f"{type(exc).__name__}: {exc}", hidden)
            # `from None`: the reason carries the detail, redacted; the original must not ride along in tracebacks.
            raise DirectoryUnavailable(f"directory {self.settings.url} unavailable: {detail}") from None


def _raw_values(entry: dict, name: str) -> list[bytes]:
    value = entry.get("raw_attributes", {}).get(name) or []
    return value if isinstance(value, list) else [value]


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
