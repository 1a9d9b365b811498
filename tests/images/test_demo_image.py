"""Building the demo golden image: an Ansible-provisioned Debian root disk plus a fast-booting kernel and
busybox initramfs, cached by its inputs, readable by QEMU, and bootable."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hypervisor.base import BootImage
from images import build, demo, demo_root
from images.config import ImageSettings
from images.demo import ImageNotBuilt, build_demo_image, find_demo_image


def _cpio_entries(path: Path) -> dict[str, tuple[int, bytes]]:
    """name → (mode, data) of a gzipped cpio newc archive."""
    raw = gzip.decompress(path.read_bytes())
    entries: dict[str, tuple[int, bytes]] = {}
    offset = 0
    while True:
        assert raw[offset : offset + 6] == b"070701"
        fields = [int(raw[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_start = offset + 110
        name = raw[name_start : name_start + name_size - 1].decode()
        data_start = name_start + name_size + (-(110 + name_size) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, raw[data_start : data_start + size])
        offset = data_start + size + (-size % 4)


def _link_into(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def seed(cache_dir: Path, demo_image: demo.DemoImage, root: bool = True) -> None:
    """Start a private cache with the shared debootstrap tarball (no download) and, unless told otherwise,
    the shared provisioned root (no Ansible run), hard-linked."""
    tarball_name = (
        f"debootstrap-{demo_root.RELEASE}-{build.base_root_key(demo_root.RELEASE, build.debian_mirror())}.tar"
    )
    _link_into(ImageSettings().cache_dir / tarball_name, cache_dir / tarball_name)
    if root:
        shared = demo_root.root_directory(ImageSettings().cache_dir, demo_image.version)
        private = demo_root.root_directory(cache_dir, demo_image.version)
        private.mkdir()
        for path in shared.iterdir():
            _link_into(path, private / path.name)


def _debugfs_cat(disk: Path, path: str, workdir: Path) -> str:
    """A file inside the qcow2's ext4, read without mounting it."""
    raw = workdir / "check.raw"
    try:
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
        return subprocess.run(
            ["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, text=True, check=True
        ).stdout
    finally:
        raw.unlink(missing_ok=True)


def _visible(cache_dir: Path) -> list[str]:
    """Image directories in the cache (not the seeded tarball, lock files or temporary directories)."""
    return sorted(
        path.name for path in cache_dir.iterdir() if path.is_dir() and not path.name.startswith(".")
    )


def _temporary(cache_dir: Path) -> list[str]:
    return [path.name for path in cache_dir.iterdir() if path.is_dir() and path.name.startswith(".")]


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory, demo_image) -> ImageSettings:
    settings = ImageSettings(cache_dir=tmp_path_factory.mktemp("image-cache"))
    seed(settings.cache_dir, demo_image)
    return settings


@pytest.fixture(scope="module")
def built(private_cache) -> demo.DemoImage:
    return build_demo_image(private_cache)


def test_second_build_reuses_the_cached_directory(private_cache, built):
    before = {path.name: path.stat().st_mtime_ns for path in built.directory.iterdir()}

    again = build_demo_image(private_cache)

    assert again == built
    assert {path.name: path.stat().st_mtime_ns for path in again.directory.iterdir()} == before
    assert _visible(private_cache.cache_dir) == [built.directory.name, f"demo-root-{built.version}"]


def test_version_is_the_cache_key_of_the_directory(built):
    assert built.name == "demo"
    assert built.directory.name == f"demo-{built.version}"
    assert len(built.version) == 16
    assert json.loads((built.directory / "manifest.json").read_text())["version"] == built.version


def test_disk_is_a_standalone_qcow2_shared_with_the_cached_root(private_cache, built):
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(built.disk)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info
    root_disk = demo_root.root_directory(private_cache.cache_dir, built.version) / "disk.qcow2"
    # Hard-linked, not copied: a second image directory costs no second copy of the Debian root.
    assert built.disk.stat().st_ino == root_disk.stat().st_ino
    assert built.kernel.stat().st_size + built.initrd.stat().st_size < 16 * 1024 * 1024


def test_disk_is_the_debian_root_provisioned_by_the_image_role(built, tmp_path):
    assert _debugfs_cat(built.disk, "/etc/smartwork-image", tmp_path) == f"demo {built.version}\n"
    assert "SMARTWORK-VDI demo desktop" in _debugfs_cat(built.disk, "/etc/issue", tmp_path)
    assert _debugfs_cat(built.disk, "/etc/debian_version", tmp_path).startswith("12.")
    passwd = _debugfs_cat(built.disk, "/etc/passwd", tmp_path)
    assert any(line.startswith("desktop:") for line in passwd.splitlines())
    log = (built.directory / "build.log").read_text()
    for step in ("ansible:", "smartwork_chroot", "mkfs.ext4:", "qemu-img convert:"):
        assert step in log
    assert "failed=0" in log
    manifest = json.loads((built.directory / "manifest.json").read_text())
    assert manifest["root"]["playbook"] == "ansible/playbooks/image.yml"
    assert manifest["root"]["release"] == "bookworm"


def test_a_change_to_the_role_changes_the_version(tmp_path, monkeypatch):
    role = tmp_path / "role"
    shutil.copytree(demo_root.ROLE_DIR, role)
    monkeypatch.setattr(demo_root, "ROLE_DIR", role)
    before = demo.discover_inputs().cache_key()
    defaults = role / "defaults" / "main.yml"
    defaults.write_text(defaults.read_text() + "# changed\n")

    assert demo.discover_inputs().cache_key() != before


def test_files_are_world_readable_for_qemu(built):
    assert built.directory.stat().st_mode & 0o005 == 0o005
    for path in built.directory.iterdir():
        assert path.stat().st_mode & 0o004, path


def test_boot_image_points_at_the_built_files(built):
    boot = BootImage.of(built)
    assert (boot.name, boot.version) == ("demo", built.version)
    assert boot.disk == built.disk and boot.kernel == built.kernel and boot.initrd == built.initrd
    assert boot.kernel.read_bytes()[0x202:0x206] == b"HdrS"  # the x86 Linux boot protocol's magic
    assert "console=tty0" in boot.cmdline


def test_initramfs_holds_init_busybox_marker_and_modules_in_dependency_order(built):
    entries = _cpio_entries(built.initrd)
    init_mode, init_script = entries["init"]
    assert stat.S_ISREG(init_mode) and init_mode & 0o111
    assert init_script.startswith(b"#!/bin/busybox sh")
    assert stat.S_ISCHR(entries["dev/console"][0])
    assert entries["etc/smartwork-image"][1].decode().strip() == built.version
    order = entries["etc/modules.order"][1].decode().split()
    for module in order:
        assert f"lib/modules/{module}" in entries
    for before, after in [
        ("virtio.ko", "virtio_blk.ko"),
        ("virtio_ring.ko", "virtio_pci.ko"),
        ("jbd2.ko", "ext4.ko"),
        ("crc32c_generic.ko", "ext4.ko"),
    ]:
        if before in order and after in order:
            assert order.index(before) < order.index(after)


def test_banner_fits_the_80_column_text_console():
    rows = demo.render_banner(demo.BANNER_TEXT).splitlines()
    assert len(rows) == 5
    # init indents the banner by three columns
    assert all(len(row) + 3 <= 80 for row in rows)


def test_find_reports_an_image_that_is_not_built(tmp_path):
    with pytest.raises(ImageNotBuilt, match="vdi image build-demo"):
        find_demo_image(ImageSettings(cache_dir=tmp_path))


def test_find_returns_the_built_image(private_cache, built):
    assert find_demo_image(private_cache) == built


def test_forced_rebuild_provisions_again_under_the_same_version(tmp_path, demo_image):
    seed(tmp_path, demo_image)
    settings = ImageSettings(cache_dir=tmp_path)
    first = build_demo_image(settings)
    marker = first.directory / "left-over"
    marker.write_text("from the first build")
    seeded_disk = first.disk.stat().st_ino

    second = build_demo_image(settings, force=True)

    assert second.version == first.version
    assert not marker.exists()
    assert second.disk.stat().st_ino != seeded_disk
    assert "failed=0" in (second.directory / "build.log").read_text()
    assert _visible(tmp_path) == [first.directory.name, f"demo-root-{first.version}"]
    assert _temporary(tmp_path) == []


def test_an_incomplete_directory_is_rebuilt(tmp_path, demo_image):
    seed(tmp_path, demo_image)
    settings = ImageSettings(cache_dir=tmp_path)
    first = build_demo_image(settings)
    first.initrd.unlink()

    again = build_demo_image(settings)

    assert again.initrd.is_file()


def test_a_new_build_removes_builds_older_than_a_day_but_the_one_before_it(tmp_path, demo_image):
    seed(tmp_path, demo_image)
    day = 86400
    # Newest first: the one before this build, one from today, and two from days ago.
    previous, today, old, oldest = (
        "fedcba9876543210",
        "00000000000000aa",
        "0123456789abcdef",
        "00000000000000bb",
    )
    for age, version in ((60, previous), (7200, today), (2 * day, old), (3 * day, oldest)):
        for name in (f"demo-{version}", f"demo-root-{version}"):
            directory = tmp_path / name
            directory.mkdir()
            (directory / "disk.qcow2").write_bytes(b"old")
            stamp = time.time() - age
            os.utime(directory, (stamp, stamp))
    unrelated = tmp_path / "demo-notes"
    unrelated.mkdir()

    built_now = build_demo_image(ImageSettings(cache_dir=tmp_path))

    assert _visible(tmp_path) == sorted(
        [
            built_now.directory.name,
            f"demo-root-{built_now.version}",
            f"demo-{previous}",
            f"demo-root-{previous}",
            f"demo-{today}",
            f"demo-root-{today}",
            unrelated.name,
        ]
    )
    assert _temporary(tmp_path) == []


def test_concurrent_builds_agree_provision_once_and_leave_no_temporary_directories(tmp_path, demo_image):
    seed(tmp_path, demo_image, root=False)
    settings = ImageSettings(cache_dir=tmp_path)
    results: list[demo.DemoImage] = []
    threads = [threading.Thread(target=lambda: results.append(build_demo_image(settings))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 3 and len(set(results)) == 1
    assert _visible(tmp_path) == [results[0].directory.name, f"demo-root-{results[0].version}"]
    assert _temporary(tmp_path) == []
    # The builders that waited used the root the first one provisioned: one Ansible run, one disk.
    assert results[0].disk.stat().st_nlink == 2


def test_a_failed_provisioning_leaves_no_image_and_keeps_the_log(tmp_path, demo_image, monkeypatch):
    seed(tmp_path, demo_image, root=False)
    playbook = tmp_path / "broken.yml"
    playbook.write_text(
        "- name: Broken\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Fail\n      ansible.builtin.fail:\n        msg: on purpose\n"
    )
    monkeypatch.setattr(demo_root, "PLAYBOOK", playbook)

    with pytest.raises(demo.ImageError, match="ansible failed") as failure:
        build_demo_image(ImageSettings(cache_dir=tmp_path))

    assert _visible(tmp_path) == ["failed-builds"]
    assert _temporary(tmp_path) == []
    kept = list((tmp_path / "failed-builds").glob("demo-root-*.log"))
    assert len(kept) == 1 and str(kept[0]) in str(failure.value)
    assert "on purpose" in kept[0].read_text()


def test_shared_cache_image_is_ready_for_the_lab(demo_image):
    assert demo_image.directory.parent == ImageSettings().cache_dir
    assert find_demo_image(ImageSettings()) == demo_image
