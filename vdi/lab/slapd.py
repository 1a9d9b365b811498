"""The lab's directory: a throwaway OpenLDAP slapd on loopback, loaded with the demo ministries and users.

Everything lives in `state_dir` under names starting with `slapd` (config, database, pid file, log, root
password), so the directory may be shared with the lab's other daemons. Every start that is not a no-op wipes
the database and loads the demo directory afresh.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template

from ldap3 import BASE, MODIFY_ADD, NONE, Connection, Server
from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import parse_dn

from sso.config import LdapSettings

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
MODULE_DIR = Path("/usr/lib/ldap")
SCHEMA_DIR = Path("/etc/ldap/schema")
DEFAULT_SUFFIX = "dc=smartwork,dc=go,dc=kr"

_HERE = Path(__file__).resolve().parent
DEMO_LDIF = _HERE / "demo.ldif"
CONF_TEMPLATE = _HERE / "slapd.conf.in"

# One documented password for every demo account; the README prints it. Lab only.
DEMO_PASSWORD = "demo1234!"  # noqa: S105 - public by design, printed for people trying the demo

# The ministries of demo.ldif: group cn (what pools are entitled by) -> Korean name (the group's description).
DEMO_GROUPS: dict[str, str] = {
    "mois": "행정안전부",
    "moef": "기획재정부",
    "msit": "과학기술정보통신부",
}


@dataclass(frozen=True)
class DemoUser:
    uid: str
    display_name: str
    groups: tuple[str, ...]
    password: str = DEMO_PASSWORD
    # posixAccount uidNumber; gidNumber is the same (a private group per user, as Debian's useradd makes).
    # The lab's session hosts create local accounts with these numbers (vdi/lab/session_hosts.py).
    uid_number: int | None = None

    @property
    def gid_number(self) -> int | None:
        return self.uid_number


# Mirrors demo.ldif (tests/sso logs every one of them in against a real slapd, so the two cannot drift).
DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser("kimmj", "김민준", ("mois",), uid_number=20001),
    DemoUser("leesy", "이서연", ("mois",), uid_number=20002),
    DemoUser("parkjh", "박지훈", ("mois", "msit"), uid_number=20003),
    DemoUser("limja", "임지아", ("mois",), uid_number=20004),
    DemoUser("choijw", "최지우", ("moef",), uid_number=20005),
    DemoUser("jungdh", "정도현", ("moef",), uid_number=20006),
    DemoUser("kangye", "강예은", ("moef",), uid_number=20007),
    DemoUser("hanjy", "한지유", ("moef",), uid_number=20008),
    DemoUser("chohy", "조하윤", ("msit",), uid_number=20009),
    DemoUser("yoonsh", "윤서현", ("msit",), uid_number=20010),
    DemoUser("jangwj", "장우진", ("msit",), uid_number=20011),
    DemoUser("guest01", "방문자 01", (), uid_number=20012),
)

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.02
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class SlapdTls:
    """Serve StartTLS on the ldap:// port and ldaps:// on `ldaps_port` with this certificate (vdi/lab/pki.py)."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    ldaps_port: int


class SlapdError(RuntimeError):
    """The lab's slapd could not be prepared, started or stopped; the message says what and where to look."""


def ssha(password: str) -> str:
    """An RFC 2307 `{SSHA}` userPassword value, salted afresh on each call."""
    salt = secrets.token_bytes(8)
    # SHA-1 because {SSHA} is defined as salted SHA-1 and every LDAP server verifies it; lab data only.
    digest = hashlib.sha1(password.encode() + salt).digest()  # noqa: S324
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def suffix_dc(suffix: str) -> str:
    """The value of the suffix's first RDN, which must be `dc=` (the root entry is a dcObject)."""
    try:
        rdns = parse_dn(suffix)
    except LDAPException as exc:
        raise ValueError(f"suffix: not a DN: {suffix!r}") from exc
    if not rdns or rdns[0][0].lower() != "dc":
        raise ValueError(f"suffix: must start with dc=, got {suffix!r}")
    return rdns[0][1]


def render_demo_ldif(suffix: str, password: str = DEMO_PASSWORD) -> str:
    """demo.ldif with the suffix filled in and a fresh salted hash of `password` for every account."""
    fill: dict[str, Callable[[], str]] = {
        "suffix": lambda: suffix,
        "suffix_dc": lambda: suffix_dc(suffix),
        "password_hash": lambda: ssha(password),
        "decoy_password_hash": lambda: ssha(secrets.token_urlsafe(32)),
    }
    return _PLACEHOLDER.sub(lambda match: fill[match[1]](), DEMO_LDIF.read_text(encoding="utf-8"))


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, whatever mode an older copy had."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _process_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may itself contain spaces or ')': split after the last one.
    return stat.rsplit(")", 1)[1].split()[0]


class Slapd:
    """One lab slapd: `ldap://127.0.0.1:<port>/` serving `suffix` from files in `state_dir`."""

    def __init__(
        self, state_dir: Path, port: int, suffix: str = DEFAULT_SUFFIX, tls: SlapdTls | None = None
    ) -> None:
        suffix_dc(suffix)  # reject a bad suffix now rather than in slapadd's output
        self.tls = tls
        # Absolute, because the config path on slapd's command line is how stop() recognises our process.
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.suffix = suffix
        self._process: subprocess.Popen | None = None

    # --- where things are ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str | None:
        return f"ldaps://127.0.0.1:{self.tls.ldaps_port}" if self.tls else None

    @property
    def root_dn(self) -> str:
        return f"cn=admin,{self.suffix}"

    @property
    def conf_file(self) -> Path:
        return self.state_dir / "slapd.conf"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "slapd.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "slapd.log"

    @property
    def root_password_file(self) -> Path:
        return self.state_dir / "slapd-rootpw"

    @property
    def _db_dir(self) -> Path:
        return self.state_dir / "slapd-db"

    @property
    def _ldif_file(self) -> Path:
        return self.state_dir / "slapd-demo.ldif"

    def root_password(self) -> str:
        """The root DN's password, generated at the last start (for admin tools and tests, never for the broker)."""
        return self.root_password_file.read_text(encoding="utf-8").strip()

    def settings(self) -> LdapSettings:
        """How the broker reaches this directory: anonymous searches under ou=people and ou=groups."""
        return LdapSettings(
            url=self.url,
            user_base=f"ou=people,{self.suffix}",
            group_base=f"ou=groups,{self.suffix}",
            decoy_dn=self.decoy_dn,
        )

    @property
    def decoy_dn(self) -> str:
        return f"cn=login-decoy,ou=system,{self.suffix}"

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start with a fresh demo directory and return once it answers; a no-op if ours already runs."""
        if self._running_pid() is not None:
            self._wait_until_answering()
            return
        self._prepare()
        self._launch()
        try:
            self._wait_until_answering()
        except SlapdError:
            self.stop()  # leave no half-started daemon behind
            raise

    def stop(self) -> None:
        """Stop the slapd this state directory started (found by pid file) and wait until it has exited."""
        pid = self._running_pid()
        if pid is None and self._process is not None and self._process.poll() is None:
            pid = self._process.pid  # ours, but stuck before writing its pid file
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            if not self._wait_exit(pid, _STOP_TIMEOUT_S):
                os.kill(pid, signal.SIGKILL)
                if not self._wait_exit(pid, _STOP_TIMEOUT_S):
                    raise SlapdError(f"slapd (pid {pid}) did not exit after SIGKILL")
        self._reap()
        self.pid_file.unlink(missing_ok=True)

    def healthy(self) -> bool:
        return self._running_pid() is not None and self._answers()

    def describe(self) -> str:
        pid = self._running_pid()
        if pid is None:
            return f"slapd: stopped (would serve {self.url}/ suffix {self.suffix}; state in {self.state_dir})"
        state = "running" if self._answers() else "NOT ANSWERING"
        return f"slapd: {state} at {self.url}/ (pid {pid}), suffix {self.suffix}, log {self.log_file}"

    # --- start, step by step --------------------------------------------------------------------------------

    def _prepare(self) -> None:
        for binary in (SLAPD, SLAPADD):
            if not binary.exists():
                raise SlapdError(f"{binary} not found: install Debian's slapd and ldap-utils packages")
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)
        shutil.rmtree(self._db_dir, ignore_errors=True)
        self._db_dir.mkdir(mode=0o700)
        root_password = secrets.token_urlsafe(24)
        _write_private(self.root_password_file, root_password + "\n")
        _write_private(self.conf_file, self._render_conf(ssha(root_password)))
        _write_private(self._ldif_file, render_demo_ldif(self.suffix))
        self._slapadd()

    def _render_conf(self, root_password_hash: str) -> str:
        # TLS directives are global, so they go before the database section of the template.
        return self._tls_conf() + Template(CONF_TEMPLATE.read_text(encoding="utf-8")).substitute(
            schema_dir=SCHEMA_DIR,
            module_dir=MODULE_DIR,
            pid_file=self.pid_file,
            args_file=self.state_dir / "slapd.args",
            suffix=self.suffix,
            root_dn=self.root_dn,
            root_password_hash=root_password_hash,
            db_dir=self._db_dir,
        )

    def _tls_conf(self) -> str:
        if self.tls is None:
            return ""
        t = self.tls
        return f'TLSCertificateFile "{t.cert_file}"\nTLSCertificateKeyFile "{t.key_file}"\nTLSCACertificateFile "{t.ca_file}"\n'

    def add_certificate(self, uid: str, der: bytes) -> None:
        """Store a user's certificate in `userCertificate;binary` (certificate login, mapping userCertificate)."""
        server = Server(self.url, connect_timeout=2, get_info=NONE)
        dn = f"uid={uid},ou=people,{self.suffix}"
        with Connection(server, self.root_dn, self.root_password(), auto_bind=True, receive_timeout=5) as c:
            if not c.modify(dn, {"userCertificate;binary": [(MODIFY_ADD, [der])]}):
                raise SlapdError(f"could not add a certificate to {dn}: {c.result['description']}")

    def _slapadd(self) -> None:
        # -q: skip consistency checks; the database is new and the LDIF ours, and it is several times faster.
        command = [str(SLAPADD), "-q", "-f", str(self.conf_file), "-l", str(self._ldif_file)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            raise SlapdError(f"slapadd could not load {self._ldif_file} (status {done.returncode}): {output}")

    def _launch(self) -> None:
        # `-d stats` keeps slapd in the foreground writing to our log file: without -d it reports start-up
        # failures (port taken, bad config) only to syslog, which the lab does not have. A new session keeps a
        # Ctrl-C meant for `vdi demo` from reaching it; the demo stops it through stop().
        urls = f"{self.url}/ {self.ldaps_url}/" if self.tls else f"{self.url}/"
        command = [str(SLAPD), "-d", "stats", "-h", urls, "-f", str(self.conf_file)]
        # The log names users and their searches: owner-only, like everything else here.
        with os.fdopen(os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        # Healthy, not merely answering: someone else's server on our port would answer too.
        while not self.healthy():
            if self._process is not None and self._process.poll() is not None:
                raise SlapdError(
                    f"slapd exited with status {self._process.returncode} while starting on {self.url}; "
                    f"its log ({self.log_file}) ends with:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise SlapdError(f"slapd did not answer on {self.url} within {_START_TIMEOUT_S:.0f} s")
            time.sleep(_POLL_INTERVAL_S)  # polling interval between probes, not a guess at start-up time

    def _answers(self) -> bool:
        """Does an anonymous base search of the suffix succeed?"""
        server = Server(self.url, connect_timeout=1, get_info=NONE)
        connection = Connection(server, receive_timeout=1, auto_referrals=False)
        try:
            connection.open()
            return connection.search(self.suffix, "(objectClass=*)", search_scope=BASE, attributes=["dc"])
        except LDAPException:
            return False
        finally:
            connection.unbind()

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- which process is ours ------------------------------------------------------------------------------

    def _running_pid(self) -> int | None:
        """The pid in our pid file if that process is alive and is a slapd reading our config, else None."""
        self._reap()
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        # A pid file can outlive its process and the pid be reused: check the command line names our config.
        # A zombie counts as gone: whoever inherited it (pid 1 here) may never reap it.
        if _process_state(pid) in (None, "Z"):
            return False
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return os.fsencode(self.conf_file) in argv

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._is_ours(pid):
            if time.monotonic() > deadline:
                return False
            self._reap()
            time.sleep(_POLL_INTERVAL_S)
        return True

    def _reap(self) -> None:
        """Collect our own child's exit status so it does not linger as a zombie."""
        if self._process is not None:
            self._process.poll()
