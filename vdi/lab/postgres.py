"""The lab's PostgreSQL: Debian's server binaries on a data directory of our own, on loopback, no systemd.

Brokers of a multi-broker lab and the tests that run on PostgreSQL share it. `start()` creates the cluster
(initdb as the `postgres` account: PostgreSQL refuses to run as root) with a role `vdi` whose password is
generated and kept in the state directory, then starts the server listening on 127.0.0.1 only, with its
socket in the state directory; `stop()` stops what this state directory started. Tests create one
database each (`create_database`), dropped again at the end.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

PG_ROOT = Path("/usr/lib/postgresql")
OWNER = "postgres"
ROLE = "vdi"
_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 60


class PostgresError(Exception):
    """The lab's PostgreSQL could not be prepared, started or stopped; the message says why."""


def server_bin_dir() -> Path:
    """The newest installed PostgreSQL's server binaries (Debian: /usr/lib/postgresql/<major>/bin)."""
    versions = sorted(
        (path for path in PG_ROOT.glob("*/bin") if (path / "pg_ctl").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not versions:
        raise PostgresError(f"no PostgreSQL server under {PG_ROOT}: install Debian's postgresql package")
    return versions[-1]


class Postgres:
    """One lab PostgreSQL serving 127.0.0.1:<port> from `state_dir`."""

    def __init__(self, state_dir: Path, port: int) -> None:
        # The `postgres` account must be able to walk to its data directory: state_dir's parents may not
        # be private to root (pytest's temporary directories are).
        self.state_dir = Path(state_dir).resolve()
        self.port = port

    @property
    def owned_dir(self) -> Path:
        """Everything the server writes (data, socket, log), owned by the postgres account."""
        return self.state_dir / "postgres"

    @property
    def data_dir(self) -> Path:
        return self.owned_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.owned_dir / "socket"

    @property
    def log_file(self) -> Path:
        return self.owned_dir / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.state_dir / "postgres-password"

    def password(self) -> str:
        return self.password_file.read_text(encoding="utf-8").strip()

    def url(self, database: str = ROLE) -> str:
        """SQLAlchemy URL of `database` as the `vdi` role, over TCP on loopback (psycopg 3)."""
        return (
            f"postgresql+psycopg://{ROLE}:{quote(self.password(), safe='')}@127.0.0.1:{self.port}/{database}"
        )

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster if there is none, start it, and return once it accepts connections."""
        if self.healthy():
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._init_cluster()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} -c fsync=off"
        self._as_owner(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "-w",
            "-t", str(_START_TIMEOUT_S), "start",
        )  # fmt: skip
        if not self.healthy():
            raise PostgresError(f"PostgreSQL did not come up on 127.0.0.1:{self.port}; see {self.log_file}")

    def stop(self) -> None:
        """Stop the server of this data directory (fast shutdown) and wait for it; a no-op if it is down."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._as_owner(
            "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(_STOP_TIMEOUT_S), "stop"
        )

    def healthy(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        result = subprocess.run(
            [str(server_bin_dir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            check=False,
        )
        return result.returncode == 0

    def describe(self) -> str:
        state = "running" if self.healthy() else "stopped"
        return f"postgresql: {state} at 127.0.0.1:{self.port}, data in {self.data_dir}, log {self.log_file}"

    # -- databases -----------------------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """A new empty database owned by the `vdi` role; its URL."""
        self._psql(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- the steps ----------------------------------------------------------------------------------------

    def _init_cluster(self) -> None:
        try:
            pwd.getpwnam(OWNER)
        except KeyError:
            raise PostgresError(f"no {OWNER} account: install Debian's postgresql package") from None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.owned_dir, ignore_errors=True)
        for directory in (self.owned_dir, self.data_dir, self.socket_dir):
            directory.mkdir(mode=0o700)
            shutil.chown(directory, OWNER, OWNER)
        password = secrets.token_urlsafe(24)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(password + "\n")
        # The superuser is reached only over the socket in our state directory (peer authentication);
        # over TCP every role needs its password (scram-sha-256).
        self._as_owner(
            "initdb", "-D", str(self.data_dir), "-U", OWNER, "--auth-local=peer",
            "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        self._start_for_setup(password)

    def _start_for_setup(self, password: str) -> None:
        options = f"-c listen_addresses='' -p {self.port} -k {self.socket_dir}"
        # -l: the server must not inherit our pipes, or waiting for pg_ctl would wait for the server too.
        self._as_owner(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "-w", "start"
        )
        try:
            escaped = password.replace("'", "''")
            self._psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{escaped}'")
            self._psql(f"CREATE DATABASE {ROLE} OWNER {ROLE}")
        finally:
            self._as_owner("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def _psql(self, statement: str) -> None:
        # The statement goes on stdin, so a password in it never shows in `ps`.
        self._as_owner(
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p", str(self.port),
            "-d", "postgres", stdin=statement + "\n", binary_dir=Path("/usr/bin"),
        )  # fmt: skip

    def _as_owner(
        self, tool: str, *args: str, stdin: str | None = None, binary_dir: Path | None = None
    ) -> None:
        command = ["runuser", "-u", OWNER, "--", str((binary_dir or server_bin_dir()) / tool), *args]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False, cwd="/")
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise PostgresError(f"{tool} failed ({result.returncode}): {' / '.join(detail)}")
