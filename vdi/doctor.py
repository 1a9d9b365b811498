"""`vdi doctor`: is this machine ready to be a host (or to run the broker and gateway)? Each check answers
ok, warn or fail, says what it saw, and for anything but ok what to do about it (docs/doctor.md)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509

OK, WARN, FAIL = "ok", "warn", "fail"
GIB = 1024**3
DEFAULT_LIBVIRT_URI = "qemu:///system"
LIBVIRT_IMAGES = Path("/var/lib/libvirt/images")
# Console tokens live 30 s and leases expire in seconds: brokers, gateways and the database must agree on the time.
MAX_CLOCK_SKEW_S = 2.0


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class DoctorOptions:
    libvirt_uri: str = DEFAULT_LIBVIRT_URI
    ssh_address: str = "127.0.0.1"
    ssh_port: int = 22
    disk_paths: list[tuple[str, Path]] = field(default_factory=list)
    min_free_gib: float = 10.0
    database_url: str | None = None
    certificates: list[tuple[str, Path]] = field(default_factory=list)
    cert_warn_days: int = 30
    skip: set[str] = field(default_factory=set)


def run_checks(options: DoctorOptions) -> list[Check]:
    checks: list[tuple[str, Callable[[DoctorOptions], Iterable[Check]]]] = [
        ("libvirt", lambda o: [check_libvirt(o.libvirt_uri)]),
        ("kvm", lambda o: [check_kvm()]),
        ("sshd", lambda o: [check_sshd(o.ssh_address, o.ssh_port)]),
        ("disk", lambda o: check_disks(o.disk_paths, o.min_free_gib)),
        ("time", lambda o: [check_time(o.database_url)]),
        ("certificates", lambda o: check_certificates(o.certificates, o.cert_warn_days)),
    ]
    return [result for name, check in checks if name not in options.skip for result in check(options)]


def as_json(results: list[Check]) -> dict:
    return {"ok": all(r.status != FAIL for r in results), "checks": [asdict(r) for r in results]}


def as_text(results: list[Check]) -> str:
    lines = []
    for result in results:
        lines.append(f"{result.status.upper():<5} {result.name:<22} {result.detail}")
        if result.fix:
            lines.append(f"{'':<5} {'':<22} fix: {result.fix}")
    failed = sum(r.status == FAIL for r in results)
    warned = sum(r.status == WARN for r in results)
    lines.append(f"{failed} failed, {warned} warning(s), {len(results) - failed - warned} ok")
    return "\n".join(lines)


# -- libvirt and KVM -------------------------------------------------------------------------------


def check_libvirt(uri: str) -> Check:
    import libvirt

    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return Check(
            "libvirt",
            FAIL,
            f"{uri} does not answer: {exc.get_error_message()}",
            "start libvirtd and virtlogd (systemctl enable --now libvirtd), and run this as a user that may "
            "use the system connection (root or the libvirt group)",
        )
    try:
        version = _version(conn.getLibVersion())
        return Check("libvirt", OK, f"{uri} answers: libvirt {version}, {conn.getType()} driver")
    finally:
        conn.close()


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def check_kvm(device: Path = Path("/dev/kvm"), cpuinfo: Path = Path("/proc/cpuinfo")) -> Check:
    if not device.exists():
        return Check(
            "kvm",
            FAIL,
            f"{device} does not exist: desktops would run under TCG emulation, many times slower",
            "load the kvm_intel or kvm_amd module and enable VT-x/AMD-V in the firmware "
            "(or nested virtualisation on the machine hosting this one)",
        )
    try:
        os.close(os.open(device, os.O_RDWR))
    except OSError as exc:
        return Check(
            "kvm", FAIL, f"{device} cannot be opened: {exc.strerror}", "add the user to the kvm group"
        )
    if not _cpu_has_virtualisation(cpuinfo):
        return Check(
            "kvm",
            WARN,
            f"{device} opens but the CPU shows no vmx/svm flag: guests run under TCG (slow boots)",
            "enable VT-x/AMD-V in the firmware, or nested virtualisation on the machine hosting this one",
        )
    return Check("kvm", OK, f"{device} opens and the CPU has hardware virtualisation")


def _cpu_has_virtualisation(cpuinfo: Path) -> bool:
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags") and {"vmx", "svm"} & set(line.partition(":")[2].split()):
            return True
    return False


# -- sshd ------------------------------------------------------------------------------------------


def check_sshd(address: str, port: int, timeout_s: float = 3.0) -> Check:
    where = f"{address}:{port}"
    fix = (
        "install and start OpenSSH's server (apt-get install openssh-server; systemctl enable --now ssh): "
        "brokers reach remote libvirt (qemu+ssh://) and the gateway reaches desktop displays over SSH"
    )
    try:
        with socket.create_connection((address, port), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            banner = conn.recv(255).split(b"\r\n")[0].decode("ascii", "replace")
    except OSError as exc:
        return Check("sshd", FAIL, f"nothing answers SSH on {where}: {exc.strerror or exc}", fix)
    if not banner.startswith("SSH-2.0-"):
        return Check("sshd", FAIL, f"{where} answers, but not as an SSH server ({banner[:40]!r})", fix)
    return Check("sshd", OK, f"{where} answers: {banner}")


# -- disk ------------------------------------------------------------------------------------------


def check_disks(paths: list[tuple[str, Path]], min_free_gib: float) -> list[Check]:
    return [check_disk(label, path, min_free_gib) for label, path in paths]


def check_disk(label: str, path: Path, min_free_gib: float) -> Check:
    name = f"disk {label}"
    if not path.exists():
        return Check(
            name, WARN, f"{path} does not exist yet", f"create it on a file system with room for {label}"
        )
    usage = shutil.disk_usage(path)
    free_gib, free_share = usage.free / GIB, usage.free / usage.total
    detail = f"{path}: {free_gib:.1f} GiB free of {usage.total / GIB:.1f} GiB ({free_share:.0%})"
    fix = f"free space under {path} (old image versions: vdi image list; stopped desktops' disks) or grow it"
    if free_gib < min_free_gib / 4 or free_share < 0.05:
        return Check(name, FAIL, detail, fix)
    if free_gib < min_free_gib or free_share < 0.15:
        return Check(name, WARN, detail, fix)
    return Check(name, OK, detail)


# -- time ------------------------------------------------------------------------------------------


def check_time(database_url: str | None) -> Check:
    """The clock is synchronised (chrony, or systemd-timesyncd through timedatectl), and agrees with the
    database's clock (PostgreSQL; SQLite's clock is this machine's own)."""
    skew = database_skew_s(database_url)
    if skew is not None and abs(skew) > MAX_CLOCK_SKEW_S:
        return Check(
            "time",
            FAIL,
            f"this clock is {skew:+.1f} s off the database's",
            "synchronise both machines' clocks with NTP (chrony or systemd-timesyncd)",
        )
    sync = ntp_synchronised()
    skew_text = f"; {skew:+.2f} s from the database's clock" if skew is not None else ""
    if sync is None and skew is not None:
        return Check("time", OK, f"the clock agrees with the database's ({skew:+.2f} s); NTP state unknown")
    if sync is None:
        return Check(
            "time",
            WARN,
            f"cannot tell whether the clock is synchronised (no chronyc, no timedatectl answer){skew_text}",
            "install chrony (apt-get install chrony) or enable systemd-timesyncd",
        )
    synchronised, source = sync
    if not synchronised:
        return Check(
            "time", FAIL, f"{source}: the clock is not synchronised{skew_text}", "check the NTP servers"
        )
    return Check("time", OK, f"{source}: the clock is synchronised{skew_text}")


def ntp_synchronised() -> tuple[bool, str] | None:
    """(synchronised, by what) from chrony or timedatectl; None when neither can tell."""
    if shutil.which("chronyc"):
        output = _run(["chronyc", "-n", "tracking"])
        if output is not None and "Leap status" in output:
            return "Leap status     : Normal" in output, "chrony"
    if shutil.which("timedatectl"):
        output = _run(["timedatectl", "show", "--property=NTPSynchronized", "--value"])
        if output is not None and output.strip() in ("yes", "no"):
            return output.strip() == "yes", "timedatectl"
    return None


def _run(argv: list[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
        if result.returncode == 0:
            return result.stdout
    return None


def database_skew_s(url: str | None) -> float | None:
    """This clock minus the database server's (PostgreSQL only); None when unknown."""
    if not url or not url.startswith("postgresql"):
        return None
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            before = dt.datetime.now(dt.UTC)
            server = connection.execute(select(func.now())).scalar_one()
            after = dt.datetime.now(dt.UTC)
    except (SQLAlchemyError, OSError):  # an unreachable database only means the skew is unknown here
        return None
    finally:
        engine.dispose()
    return ((before + (after - before) / 2) - server).total_seconds()


# -- certificates ----------------------------------------------------------------------------------


def check_certificates(files: list[tuple[str, Path]], warn_days: int) -> list[Check]:
    return [check for label, path in files for check in check_certificate_file(label, path, warn_days)]


def check_certificate_file(label: str, path: Path, warn_days: int) -> list[Check]:
    name = f"certificate {label}"
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        return [Check(name, FAIL, f"{path}: cannot be read as PEM certificates: {exc}", "check the path")]
    return [certificate_expiry(name, path, cert, warn_days) for cert in certificates]


def certificate_expiry(name: str, path: Path, cert: x509.Certificate, warn_days: int) -> Check:
    now = dt.datetime.now(dt.UTC)
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    left = cert.not_valid_after_utc - now
    detail = f"{path}: {subject}, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    fix = f"renew it and replace {path}, then restart the services that read it"
    if cert.not_valid_before_utc > now:
        return Check(name, FAIL, f"{detail}, not valid before {cert.not_valid_before_utc:%Y-%m-%d}", fix)
    if left.total_seconds() <= 0:
        return Check(name, FAIL, f"{detail}: expired {-left.days} day(s) ago", fix)
    if left < dt.timedelta(days=warn_days):
        return Check(name, WARN, f"{detail}: expires in {left.days} day(s)", fix)
    return Check(name, OK, f"{detail} ({left.days} days left)")
