"""Building the demo golden image: cached by its inputs, small, readable by QEMU, and bootable."""

from __future__ import annotations

import gzip
import json
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from images import demo
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


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory) -> ImageSettings:
    return ImageSettings(cache_dir=tmp_path_factory.mktemp("image-cache"))


@pytest.fixture(scope="module")
def built(private_cache) -> demo.DemoImage:
    return build_demo_image(private_cache)


def test_second_build_reuses_the_cached_directory(private_cache, built):
    before = {path.name: path.stat().st_mtime_ns for path in built.directory.iterdir()}

    again = build_demo_image(private_cache)

    assert again == built
    assert {path.name: path.stat().st_mtime_ns for path in again.directory.iterdir()} == before
    assert [path.name for path in private_cache.cache_dir.iterdir()] == [built.directory.name]


def test_version_is_the_cache_key_of_the_directory(built):
    assert built.name == "demo"
    assert built.directory.name == f"demo-{built.version}"
    assert len(built.version) == 16
    assert json.loads((built.directory / "manifest.json").read_text())["version"] == built.version


def test_disk_is_qcow2_and_image_is_small(built):
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(built.disk)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info
    total = sum(path.stat().st_size for path in built.directory.iterdir())
    assert total < 16 * 1024 * 1024


def test_files_are_world_readable_for_qemu(built):
    assert built.directory.stat().st_mode & 0o005 == 0o005
    for path in built.directory.iterdir():
        assert path.stat().st_mode & 0o004, path


def test_boot_image_points_at_the_built_files(built):
    boot = built.boot_image()
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


def test_forced_rebuild_replaces_the_directory_under_the_same_version(tmp_path):
    settings = ImageSettings(cache_dir=tmp_path)
    first = build_demo_image(settings)
    marker = first.directory / "left-over"
    marker.write_text("from the first build")

    second = build_demo_image(settings, force=True)

    assert second.version == first.version
    assert not marker.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == [first.directory.name]


def test_an_incomplete_directory_is_rebuilt(tmp_path):
    settings = ImageSettings(cache_dir=tmp_path)
    first = build_demo_image(settings)
    first.initrd.unlink()

    again = build_demo_image(settings)

    assert again.initrd.is_file()


def test_concurrent_builds_agree_and_leave_no_temporary_directories(tmp_path):
    settings = ImageSettings(cache_dir=tmp_path)
    results: list[demo.DemoImage] = []
    threads = [threading.Thread(target=lambda: results.append(build_demo_image(settings))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 3 and len(set(results)) == 1
    assert [path.name for path in tmp_path.iterdir()] == [results[0].directory.name]


def test_shared_cache_image_is_ready_for_the_lab(demo_image):
    assert demo_image.directory.parent == ImageSettings().cache_dir
    assert find_demo_image(ImageSettings()) == demo_image
