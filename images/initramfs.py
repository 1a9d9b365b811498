"""A tiny initramfs writer: cpio "newc" archives built in memory, and kernel module closures.

Writing the archive ourselves (instead of staging a tree for `cpio`) lets it carry device nodes and root
ownership without mknod or chown, and makes its bytes depend only on its contents (fixed mtime, inode
numbers in order), so identical inputs give an identical initramfs.
"""

from __future__ import annotations

import gzip
import io
import lzma
import stat
from dataclasses import dataclass, field
from pathlib import Path

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


class ModuleNotAvailable(Exception):
    """A kernel module the image needs is neither built into the kernel nor shipped as a file."""


@dataclass
class Archive:
    """Entries of a cpio newc archive, written out by `gzipped()`."""

    _entries: list[tuple[str, int, bytes, int]] = field(default_factory=list)

    def directory(self, path: str, mode: int = 0o755) -> None:
        self._entries.append((path, stat.S_IFDIR | mode, b"", 0))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._entries.append((path, stat.S_IFREG | mode, data, 0))

    def char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entries.append((path, stat.S_IFCHR | mode, b"", (major << 8) | minor))

    def gzipped(self) -> bytes:
        raw = io.BytesIO()
        for inode, (path, mode, data, rdev) in enumerate(self._entries, start=1):
            _write_entry(raw, inode, path, mode, data, rdev)
        _write_entry(raw, 0, TRAILER, 0, b"", 0)
        # mtime=0 keeps the gzip header free of the build time.
        return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def _write_entry(out: io.BytesIO, inode: int, path: str, mode: int, data: bytes, rdev: int) -> None:
    name = path.lstrip("/").encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (inode, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(name), 0)
    out.write(NEWC_MAGIC + b"".join(b"%08X" % value for value in fields) + name)
    _pad(out)
    out.write(data)
    _pad(out)


def _pad(out: io.BytesIO) -> None:
    # newc aligns both the header+name and the data to 4 bytes.
    out.write(b"\0" * (-out.tell() % 4))


def _module_name(path: str) -> str:
    # modules.dep names files (virtio-pci.ko.xz); modprobe names modules with underscores (virtio_pci).
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def _read_dependencies(modules_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """Module name → (its file relative to modules_dir, names of the modules it needs)."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        target, _, deps = line.partition(":")
        table[_module_name(target)] = (target, [_module_name(d) for d in deps.split()])
    return table


def _read_builtin(modules_dir: Path) -> set[str]:
    path = modules_dir / "modules.builtin"
    return {_module_name(line) for line in path.read_text().split()} if path.exists() else set()


def module_closure(modules_dir: Path, wanted: list[str]) -> list[str]:
    """Files (relative to modules_dir) of `wanted` and everything they need, dependencies first.

    Modules built into the kernel are left out; a module that is neither built in nor shipped is an error.
    """
    deps = _read_dependencies(modules_dir)
    builtin = _read_builtin(modules_dir)
    order: list[str] = []

    def visit(name: str) -> None:
        if name in builtin or deps.get(name, ("", []))[0] in order:
            return
        if name not in deps:
            raise ModuleNotAvailable(f"kernel module {name} not found in {modules_dir}")
        target, needs = deps[name]
        for need in needs:
            visit(need)
        order.append(target)

    for name in wanted:
        visit(name)
    return order


def read_module(path: Path) -> bytes:
    """The module's ELF bytes; busybox insmod cannot load compressed modules, so unpack them here."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko"):
        return data
    raise ModuleNotAvailable(f"kernel module {path} uses a compression this builder cannot unpack")
