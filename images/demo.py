"""The demo golden image: an Ansible-provisioned Debian root disk, booted fast by a busybox initramfs.

The disk is made like any `vdi image build` image (images/demo_root.py): the cached debootstrap root,
provisioned by the image playbook (the smartwork_image_build role) through the smartwork_chroot
connection, turned into an ext4 qcow2. The kernel is the machine's Debian kernel; instead of booting the
root with systemd (about a minute under TCG), a busybox initramfs mounts it as /dev/vda and shows a screen
with the desktop's label and what the role wrote on the disk (see demo_init.sh), seconds after QEMU starts.

Builds are cached under `<cache_dir>/demo-<key>/`, where the key hashes every build input (kernel,
busybox, init script, the role, playbook, release and package list); the provisioned disk is cached next
to it in `demo-root-<key>/` and hard-linked in. A build goes into a temporary directory renamed into
place when complete, so a directory that exists is a whole image.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from images import demo_root, initramfs
from images.boot import BOOT_DIR, MODULES_ROOT, ImageError, newest_kernel_version
from images.config import ImageSettings

log = logging.getLogger(__name__)

NAME = "demo"
HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "demo_init.sh"
BUSYBOX = Path("/bin/busybox")
# virtio disk and ext4 to mount the desktop's disk; crc32c is what ext4 checksums need, found at mount time
# through the crypto API rather than as a module dependency.
KERNEL_MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "button", "evdev"]
# console=ttyS0 keeps kernel errors in the serial log; tty0 (the VGA text console, last so it is
# /dev/console) is what VNC shows. consoleblank=0: an idle desktop must keep showing its banner.
# no_timer_check: the kernel's early check that the IO-APIC timer ticks gives up and panics ("IO-APIC +
# timer doesn't work!") when the host does not schedule the guest's vCPU during it, which happens on a
# loaded host (seen with the test suite on two busy cores); a KVM guest's clock source is kvm-clock anyway.
CMDLINE = "console=ttyS0 console=tty0 consoleblank=0 no_timer_check quiet"
FILES = {"kernel": "vmlinuz", "initrd": "initrd.img", "disk": "disk.qcow2", "manifest": "manifest.json"}
BANNER_TEXT = "SMARTWORK-VDI"


class ImageNotBuilt(ImageError):
    """The image for the current build inputs is not in the cache."""


@dataclass(frozen=True)
class DemoImage:
    version: str
    directory: Path
    name: str = NAME

    @property
    def kernel(self) -> Path:
        return self.directory / FILES["kernel"]

    @property
    def initrd(self) -> Path:
        return self.directory / FILES["initrd"]

    @property
    def disk(self) -> Path:
        return self.directory / FILES["disk"]

    @property
    def cmdline(self) -> str:
        return CMDLINE


@dataclass(frozen=True)
class BuildInputs:
    """What a build reads from the machine; their hash is the image version."""

    kernel_version: str
    kernel: Path
    busybox_version: str
    # SHA-256 of what decides the provisioned disk (images/demo_root.py: role, playbook, release, packages).
    root_digest: str

    @property
    def modules_dir(self) -> Path:
        return MODULES_ROOT / self.kernel_version

    def cache_key(self) -> str:
        digest = hashlib.sha256()
        for source in (Path(__file__), Path(initramfs.__file__), INIT_SCRIPT):
            digest.update(source.read_bytes())
        digest.update(f"\0{self.kernel_version}\0{self.busybox_version}\0{self.root_digest}\0".encode())
        # Debian can rebuild a kernel without changing its ABI version; the bytes tell the builds apart.
        for binary in (self.kernel, BUSYBOX):
            digest.update(_sha256_file(binary).encode())
        return digest.hexdigest()[:16]


def build_demo_image(settings: ImageSettings, force: bool = False) -> DemoImage:
    """The demo image for this machine's kernel and busybox, built unless cached (or always with force)."""
    inputs = discover_inputs()
    key = inputs.cache_key()
    target = settings.cache_dir / f"{NAME}-{key}"
    if not force and _is_complete(target):
        log.debug("demo image %s cached in %s", key, target)
        return DemoImage(version=key, directory=target)
    started = time.monotonic()
    settings.cache_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}-{key}.", dir=settings.cache_dir))
    try:
        _build(inputs, key, staging, settings.cache_dir, force)
        _publish(staging, target, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built demo image %s in %s (%.1f s)", key, target, time.monotonic() - started)
    prune_superseded(settings.cache_dir, key)
    return DemoImage(version=key, directory=target)


_BUILD_DIR = re.compile(rf"^{NAME}-(?:root-)?([0-9a-f]{{16}})$")


def prune_superseded(cache_dir: Path, keep: str, previous: int = 1, min_age_s: float = 86400.0) -> list[Path]:
    """Remove demo images and demo roots of older input hashes, left by earlier builds.

    The build of `keep` stays, and so do the `previous` most recently built other versions and any
    version built within `min_age_s`: another checkout sharing this cache (a CI clone of the last commit,
    or one running its tests while this one builds) may still be using them. Desktops never read these
    directories (the broker uploads the base disk into each host's storage pool), so an older build is
    only disk space. Returns the directories removed.
    """
    by_version: dict[str, list[Path]] = {}
    for entry in cache_dir.iterdir():
        match = _BUILD_DIR.match(entry.name)
        if match is not None and match.group(1) != keep and entry.is_dir():
            by_version.setdefault(match.group(1), []).append(entry)
    built_at = {version: max(path.stat().st_mtime for path in paths) for version, paths in by_version.items()}
    newest_first = sorted(built_at, key=built_at.__getitem__, reverse=True)
    cutoff = time.time() - min_age_s
    removed = []
    for version in newest_first[previous:]:
        if built_at[version] > cutoff:
            continue
        for entry in sorted(by_version[version]):
            _move_aside(entry)
            removed.append(entry)
            log.info("removed superseded demo build %s", entry)
        (cache_dir / f".{NAME}-root-{version}.lock").unlink(missing_ok=True)
    return removed


def find_demo_image(settings: ImageSettings) -> DemoImage:
    """The cached demo image for this machine's build inputs; ImageNotBuilt if it has not been built."""
    key = discover_inputs().cache_key()
    target = settings.cache_dir / f"{NAME}-{key}"
    if not _is_complete(target):
        raise ImageNotBuilt(
            f"demo image {key} is not built in {settings.cache_dir}; run `vdi image build-demo`"
        )
    return DemoImage(version=key, directory=target)


def discover_inputs() -> BuildInputs:
    kernel_version = newest_kernel_version()
    return BuildInputs(
        kernel_version=kernel_version,
        kernel=BOOT_DIR / f"vmlinuz-{kernel_version}",
        busybox_version=_busybox_version(),
        root_digest=demo_root.inputs_digest(),
    )


def _busybox_version() -> str:
    if not BUSYBOX.exists():
        raise ImageError(f"{BUSYBOX} not found (install busybox-static)")
    stat = BUSYBOX.stat()
    # Running busybox forks the broker: once per binary, not once per desktop.
    return _busybox_version_of(stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _busybox_version_of(inode: int, size: int, mtime_ns: int) -> str:
    result = subprocess.run([str(BUSYBOX)], capture_output=True, text=True, check=False)
    first_line = (result.stdout or result.stderr).splitlines()[:1]
    if not first_line or not first_line[0].startswith("BusyBox"):
        raise ImageError(f"{BUSYBOX} does not look like busybox")
    return first_line[0].split(" multi-call")[0]


def _sha256_file(path: Path) -> str:
    # The broker asks for the demo image's version (which hashes the kernel and busybox) on every desktop
    # it makes; a logon storm made that a measurable share of a broker's CPU (docs/ha.md). A file whose
    # inode, size and modification time are unchanged has the same digest.
    stat = path.stat()
    return _sha256_of(path, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: Path, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in FILES.values())


def _build(inputs: BuildInputs, key: str, staging: Path, cache_dir: Path, force: bool) -> None:
    _copy_world_readable(inputs.kernel, staging / FILES["kernel"])
    initrd = staging / FILES["initrd"]
    initrd.write_bytes(_initramfs(inputs, key))
    initrd.chmod(0o644)
    try:
        root = demo_root.ensure_root(cache_dir, key, force=force)
    except demo_root.RootBuildError as exc:
        raise ImageError(str(exc)) from None
    # Hard links: the base disk is only ever read (desktops write to overlays), so the copies can share it.
    _link_or_copy(root / demo_root.FILES["disk"], staging / FILES["disk"])
    _link_or_copy(root / demo_root.FILES["build_log"], staging / "build.log")
    _write_manifest(inputs, key, staging)
    # QEMU runs as libvirt-qemu, and the files get uploaded from here by whoever runs the broker.
    staging.chmod(0o755)


def _publish(staging: Path, target: Path, force: bool) -> None:
    """Move a finished build into place; if another build got there first, keep that one (unless forced)."""
    if force or (target.exists() and not _is_complete(target)):
        _move_aside(target)
    try:
        staging.rename(target)
    except OSError:
        if not _is_complete(target):
            raise ImageError(f"cannot move the built image into {target}") from None
        log.info("another build of %s finished first; using it", target.name)


def _move_aside(target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    try:
        target.rename(old)
    except FileNotFoundError:
        return  # a concurrent forced build moved it first
    shutil.rmtree(old, ignore_errors=True)


def _copy_world_readable(source: Path, target: Path) -> None:
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        raise ImageError(f"cannot copy {source}: {exc.strerror}") from None
    target.chmod(0o644)


def _initramfs(inputs: BuildInputs, key: str) -> bytes:
    archive = initramfs.Archive()
    for directory in (
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "etc",
        "lib",
        "lib/modules",
        "mnt",
        "mnt/disk",
        "root",
        "tmp",
    ):
        archive.directory(directory)
    # The kernel opens /dev/console for init before any filesystem (devtmpfs) is mounted.
    archive.char_device("dev/console", 5, 1)
    archive.file("init", INIT_SCRIPT.read_bytes(), mode=0o755)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
    archive.file("etc/smartwork-image", f"{key}\n".encode())
    archive.file("etc/banner", render_banner(BANNER_TEXT).encode())
    _add_modules(archive, inputs)
    return archive.gzipped()


def _add_modules(archive: initramfs.Archive, inputs: BuildInputs) -> None:
    try:
        files = initramfs.module_closure(inputs.modules_dir, KERNEL_MODULES)
    except initramfs.ModuleNotAvailable as exc:
        raise ImageError(f"kernel {inputs.kernel_version}: {exc}") from None
    order = []
    for relative in files:
        name = Path(relative).name.split(".ko", 1)[0] + ".ko"
        archive.file(f"lib/modules/{name}", initramfs.read_module(inputs.modules_dir / relative))
        order.append(name)
    archive.file("etc/modules.order", "".join(f"{name}\n" for name in order).encode())


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        _copy_world_readable(source, target)


def _write_manifest(inputs: BuildInputs, key: str, staging: Path) -> None:
    manifest = {
        "name": NAME,
        "version": key,
        "kernel_version": inputs.kernel_version,
        "busybox_version": inputs.busybox_version,
        "root": _root_manifest(),
        "cmdline": CMDLINE,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {
            role: {
                "name": name,
                "bytes": (staging / name).stat().st_size,
                "sha256": _sha256_file(staging / name),
            }
            for role, name in FILES.items()
            if role != "manifest"
        },
    }
    path = staging / FILES["manifest"]
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    path.chmod(0o644)


def _root_manifest() -> dict[str, str]:
    """How the disk was made, for a person reading the manifest (build.log has every step's output)."""
    return {
        "built_by": "debootstrap + ansible-playbook (smartwork_chroot) + mkfs.ext4",
        "release": demo_root.RELEASE,
        "playbook": str(demo_root.PLAYBOOK.relative_to(demo_root.build.REPO)),
        "role": demo_root.ROLE_DIR.name,
        "build_log": "build.log",
    }


# A 5-row block font for the banner; '#' becomes a full block (CP437 0xDB on the VGA text console).
FONT = {
    "S": [" ####", "#    ", " ### ", "    #", "#### "],
    "M": ["#   #", "## ##", "# # #", "#   #", "#   #"],
    "A": [" ### ", "#   #", "#####", "#   #", "#   #"],
    "R": ["#### ", "#   #", "#### ", "#  # ", "#   #"],
    "T": ["#####", "  #  ", "  #  ", "  #  ", "  #  "],
    "W": ["#   #", "#   #", "# # #", "## ##", "#   #"],
    "O": [" ### ", "#   #", "#   #", "#   #", " ### "],
    "K": ["#   #", "#  # ", "###  ", "#  # ", "#   #"],
    "-": ["   ", "   ", "###", "   ", "   "],
    "V": ["#   #", "#   #", "#   #", " # # ", "  #  "],
    "D": ["#### ", "#   #", "#   #", "#   #", "#### "],
    "I": ["###", " # ", " # ", " # ", "###"],
}


def render_banner(text: str) -> str:
    rows = [" ".join(FONT[char][row] for char in text).rstrip() for row in range(5)]
    return "".join(row.replace("#", "\u2588") + "\n" for row in rows)
