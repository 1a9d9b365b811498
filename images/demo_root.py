"""The demo image's disk: a Debian root built by the same pipeline as `vdi image build`.

The cached debootstrap tarball (images/build.py) is unpacked, the image playbook (the smartwork_image_build
role) provisions it through the smartwork_chroot connection, and `make_disk` turns it into an ext4 qcow2.
The demo desktop does not boot that root with systemd: its busybox initramfs (demo_init.sh) mounts it,
shows what the role wrote there (/etc/smartwork-image, /etc/issue) and keeps its boot counter on it, so
a desktop still shows its screen seconds after QEMU starts under TCG.

The provisioned disk is cached as `<cache_dir>/demo-root-<version>/` (disk.qcow2 and the build log), the
version being the demo image's key, which covers every input read here. A build goes into a temporary
directory renamed into place when whole; concurrent builders of one version wait on a lock file instead
of provisioning the same root twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from images import build

log = logging.getLogger(__name__)

NAME = "demo"
RELEASE = "bookworm"
PLAYBOOK = build.DEFAULT_PLAYBOOK
ROLE_DIR = build.ANSIBLE_DIR / "roles" / "smartwork_image_build"
CONNECTION_PLUGIN = build.ANSIBLE_DIR / "plugins" / "connection" / "smartwork_chroot.py"
DISK_LABEL = "smartwork-demo"
# The role's defaults, except what makes the demo desktop recognisable; name and version are added per build.
EXTRA_VARS = {
    "smartwork_image_build_hostname": "smartwork-demo",
    "smartwork_image_build_banner": "SMARTWORK-VDI demo desktop",
}
FILES = {"disk": "disk.qcow2", "build_log": "build.log"}


class RootBuildError(Exception):
    """The demo root could not be provisioned; the message names the step and the kept build log."""


def inputs_digest() -> str:
    """SHA-256 over everything that decides the provisioned root's contents.

    The role's files, the playbook, the chroot connection, ansible.cfg, this module and images/build.py
    (the pipeline), the release and the debootstrap key (mirror and base package list).
    """
    digest = hashlib.sha256()
    sources = {
        "demo_root.py": Path(__file__),
        # The pipeline itself: debootstrap packages, how Ansible is called, how the disk is made.
        "build.py": Path(build.__file__),
        "playbook": PLAYBOOK,
        "connection": CONNECTION_PLUGIN,
        "ansible.cfg": build.ANSIBLE_DIR / "ansible.cfg",
    }
    for path in sorted(ROLE_DIR.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            sources[f"role/{path.relative_to(ROLE_DIR)}"] = path
    for label, path in sources.items():
        digest.update(f"\0{label}\0".encode())
        digest.update(path.read_bytes())
    digest.update(f"\0{RELEASE}\0{build.base_root_key(RELEASE, build.debian_mirror())}\0".encode())
    for key, value in sorted(EXTRA_VARS.items()):
        digest.update(f"\0{key}={value}".encode())
    return digest.hexdigest()


def root_directory(cache_dir: Path, version: str) -> Path:
    return cache_dir / f"{NAME}-root-{version}"


def is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in FILES.values())


def ensure_root(cache_dir: Path, version: str, force: bool = False) -> Path:
    """The directory holding the provisioned demo disk of this version, built unless cached (or forced)."""
    target = root_directory(cache_dir, version)
    if not force and is_complete(target):
        return target
    if os.geteuid() != 0:
        raise RootBuildError(
            f"demo root {version} is not built in {cache_dir}, and building it needs root "
            "(debootstrap and chroot); run `vdi image build-demo` as root"
        )
    cache_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    with _lock(cache_dir / f".{target.name}.lock"):
        # Someone else may have finished it while this builder waited (a forced build makes its own).
        if not force and is_complete(target):
            return target
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
        try:
            _provision_into(staging, cache_dir, version)
            if target.exists():
                _move_aside(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("provisioned demo root %s in %s (%.1f s)", version, target, time.monotonic() - started)
    return target


def _provision_into(staging: Path, cache_dir: Path, version: str) -> None:
    build_log = build.BuildLog(staging / FILES["build_log"])
    request = build.BuildRequest(
        name=NAME, version=version, playbook=PLAYBOOK, release=RELEASE, extra_vars=dict(EXTRA_VARS)
    )
    try:
        tarball = build.ensure_base_tarball(cache_dir, RELEASE, build_log)
        root = staging / "root"
        build.unpack_root(tarball, root, build_log)
        build.provision(root, request, build_log)
        disk = build.make_disk(root, staging, DISK_LABEL, build_log)
        shutil.rmtree(root)
    except (build.BuildError, OSError) as exc:
        kept = _keep_failed_log(cache_dir, version, build_log)
        # BuildError points at the log in the staging directory, which is about to go; name the kept copy.
        reason = str(exc).partition("; see ")[0]
        raise RootBuildError(f"demo root {version}: {reason}; build log kept in {kept}") from None
    # QEMU runs as libvirt-qemu, and the image directory links these files.
    disk.chmod(0o644)
    build_log.path.chmod(0o644)
    staging.chmod(0o755)


def _keep_failed_log(cache_dir: Path, version: str, build_log: build.BuildLog) -> Path:
    failed = cache_dir / "failed-builds"
    failed.mkdir(mode=0o755, exist_ok=True)
    kept = failed / f"{NAME}-root-{version}-{int(time.time())}.log"
    shutil.copyfile(build_log.path, kept)
    log.error("demo root %s failed; log kept in %s", version, kept)
    return kept


def _move_aside(target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    target.rename(old)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    # flock locks belong to the open file, so threads of one process exclude each other too.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
