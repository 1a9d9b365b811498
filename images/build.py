"""`vdi image build`: debootstrap a minimal Debian root, provision it with Ansible, make a bootable qcow2.

Steps, each logged to the build log kept with the version:
1. debootstrap (cached): a minbase root for the release, from the Debian mirror apt already uses, packed
   as a tarball under `<cache_dir>/debootstrap-<key>.tar` where the key hashes release, mirror and
   package list; later builds unpack it instead of downloading again;
2. Ansible: the playbook (the smartwork_image_build role) runs inside the unpacked root through the
   smartwork_chroot connection shipped in ansible/ (no Galaxy collection needed);
3. disk: `mkfs.ext4 -d` turns the root into a filesystem image, `qemu-img convert` into a compact qcow2;
4. boot files: the host's Debian kernel and initrd (initramfs-tools, with virtio and ext4), booted directly
   with `root=/dev/vda`, so the image needs no boot loader;
5. catalog: the qcow2, kernel, initrd and build log are registered as a new immutable version.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from images.boot import BOOT_DIR, newest_kernel_version
from images.files import NewVersion
from images.progress import Progress

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
ANSIBLE_DIR = REPO / "ansible"
DEFAULT_PLAYBOOK = ANSIBLE_DIR / "playbooks" / "image.yml"
APT_SOURCES = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# Small on purpose: the role installs the rest. python3 and python3-apt let Ansible's modules run inside.
BASE_PACKAGES = ["python3", "python3-apt", "systemd-sysv", "udev", "kmod", "ifupdown"]
# no_timer_check: see images/demo.py (a guest on a loaded host must not panic in the early timer check).
CMDLINE = "root=/dev/vda rw console=ttyS0 console=tty0 consoleblank=0 no_timer_check"
# Free space left in the filesystem beyond what the root uses: room for logs and the user's files.
HEADROOM_BYTES = 512 * 1024 * 1024


class BuildError(Exception):
    """A build step failed; the message names the step, and the build log has the details."""


@dataclass(frozen=True)
class BuildRequest:
    name: str
    version: str
    playbook: Path = DEFAULT_PLAYBOOK
    release: str = "bookworm"
    extra_vars: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildResult:
    new_version: NewVersion
    workdir: Path

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def debian_mirror(sources: list[Path] = APT_SOURCES) -> str:
    """The Debian mirror apt on this machine uses (the only one reachable in closed networks)."""
    for source in sources:
        if not source.is_file():
            continue
        for line in source.read_text(errors="replace").splitlines():
            words = line.split()
            if words[:1] in (["deb"], ["URIs:"]):
                mirror = next((w for w in words[1:] if w.rstrip("/").endswith("/debian")), None)
                if mirror:
                    return mirror.rstrip("/")
    return FALLBACK_MIRROR


class BuildLog:
    """The build log: every step's command and output, kept with the version."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def note(self, text: str) -> None:
        with self.path.open("a") as stream:
            stream.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")

    def run(self, step: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.note(f"{step}: {' '.join(argv)}")
        progress = Progress(step)
        with self.path.open("a") as stream:
            result = subprocess.run(argv, stdout=stream, stderr=subprocess.STDOUT, env=env, check=False)
        progress.finish()
        if result.returncode != 0:
            raise BuildError(f"{step} failed with status {result.returncode}; see {self.path}")


def base_root_key(release: str, mirror: str) -> str:
    digest = hashlib.sha256(f"{release}\0{mirror}\0{','.join(BASE_PACKAGES)}".encode())
    return digest.hexdigest()[:16]


def ensure_base_tarball(cache_dir: Path, release: str, build_log: BuildLog) -> Path:
    """The cached debootstrap tarball for the release, made unless present."""
    mirror = debian_mirror()
    tarball = cache_dir / f"debootstrap-{release}-{base_root_key(release, mirror)}.tar"
    if tarball.is_file():
        build_log.note(f"debootstrap: reusing {tarball}")
        return tarball
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap not found (install debootstrap)")
    cache_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".debootstrap.", dir=cache_dir))
    try:
        root = staging / "root"
        build_log.run(
            "debootstrap",
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                release,
                str(root),
                mirror,
            ],
        )
        partial = staging / "root.tar"
        build_log.run("pack base root", ["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."])
        # Renamed into place only when whole, so a tarball that exists is a complete root.
        partial.rename(tarball)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tarball


def unpack_root(tarball: Path, root: Path, build_log: BuildLog) -> None:
    root.mkdir(mode=0o755)
    build_log.run("unpack base root", ["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(root)])


def provision(root: Path, request: BuildRequest, build_log: BuildLog) -> None:
    if not request.playbook.is_file():
        raise BuildError(f"playbook {request.playbook} not found")
    extra = {
        "smartwork_image_build_image_name": request.name,
        "smartwork_image_build_image_version": request.version,
        **request.extra_vars,
    }
    argv = [
        str(Path(sys.executable).with_name("ansible-playbook")),
        "-i",
        f"{root},",
        "-c",
        "smartwork_chroot",
        str(request.playbook),
    ]
    # As JSON: key=value pairs would split a value with spaces (a banner) into separate words.
    argv += ["-e", json.dumps(extra)]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    build_log.run("ansible", argv, env=env)


def _tree_bytes(root: Path) -> int:
    result = subprocess.run(["du", "-sb", str(root)], capture_output=True, text=True, check=True)
    return int(result.stdout.split()[0])


def make_disk(root: Path, workdir: Path, label: str, build_log: BuildLog) -> Path:
    raw = workdir / "disk.raw"
    with raw.open("wb") as stream:
        # ext4 metadata takes a few percent; the headroom is free space the desktop can use.
        stream.truncate((_tree_bytes(root) * 11 // 10 + HEADROOM_BYTES) // (1 << 20) * (1 << 20))
    build_log.run("mkfs.ext4", ["mkfs.ext4", "-q", "-F", "-L", label[:16], "-d", str(root), str(raw)])
    disk = workdir / "disk.qcow2"
    build_log.run(
        "qemu-img convert", ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)]
    )
    raw.unlink()
    return disk


def build_image(cache_dir: Path, request: BuildRequest, os_name: str | None = None) -> BuildResult:
    """Build the image into a work directory; the caller registers `new_version` and calls cleanup()."""
    workdir = Path(tempfile.mkdtemp(prefix=f".build-{request.name}-", dir=_ensure(cache_dir)))
    build_log = BuildLog(workdir / "build.log")
    try:
        tarball = ensure_base_tarball(cache_dir, request.release, build_log)
        root = workdir / "root"
        unpack_root(tarball, root, build_log)
        provision(root, request, build_log)
        disk = make_disk(root, workdir, request.name, build_log)
        shutil.rmtree(root)
        kernel_version = newest_kernel_version()
        build_log.note(f"boot files: kernel {kernel_version} from {BOOT_DIR}")
    except BaseException:
        _keep_failed_log(cache_dir, request, build_log)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    new = NewVersion(
        name=request.name,
        version=request.version,
        file=disk,
        os=os_name or f"debian-{request.release}",
        build_log=build_log.path,
        built_by=getpass.getuser(),
        kernel=BOOT_DIR / f"vmlinuz-{kernel_version}",
        initrd=BOOT_DIR / f"initrd.img-{kernel_version}",
        cmdline=CMDLINE,
    )
    return BuildResult(new_version=new, workdir=workdir)


def _ensure(directory: Path) -> Path:
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    return directory


def _keep_failed_log(cache_dir: Path, request: BuildRequest, build_log: BuildLog) -> None:
    # A failed build registers nothing, but its log is what the operator needs next.
    failed = _ensure(cache_dir / "failed-builds") / f"{request.name}-{request.version}-{int(time.time())}.log"
    shutil.copyfile(build_log.path, failed)
    log.error("image build %s %s failed; log kept in %s", request.name, request.version, failed)
