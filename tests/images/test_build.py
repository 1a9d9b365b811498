"""`vdi image build`: debootstrap (cached) + the Ansible role in a chroot + ext4 qcow2, registered, and
booting under libvirt to the provisioned login console."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from broker.db.migrate import upgrade
from hypervisor.base import BootImage, DesktopSpec
from hypervisor.libvirt_provider import LibvirtProvider
from images.build import BuildLog, debian_mirror, ensure_base_tarball
from images.config import ImageSettings
from tests.fixtures.images import CONFIG_TOML, vdi
from tests.fixtures.libvirt import wait_for_console

# Under TCG on two shared cores systemd takes about a minute to reach the login prompt.
LOGIN_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def base_tarball(tmp_path_factory) -> Path:
    """The machine-wide debootstrap cache (made once, about three minutes, then reused by every run)."""
    log = BuildLog(tmp_path_factory.mktemp("base") / "build.log")
    return ensure_base_tarball(ImageSettings().cache_dir, "bookworm", log)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, base_tarball) -> Path:
    directory = tmp_path_factory.mktemp("build")
    store = directory / "store"
    store.mkdir()
    # The private store starts with the shared base root, so the test does not debootstrap again.
    shutil.copyfile(base_tarball, store / base_tarball.name)
    path = directory / "vdi.toml"
    path.write_text(CONFIG_TOML.format(db=directory / "vdi.db", store=store))
    upgrade(f"sqlite:///{directory / 'vdi.db'}")
    return path


@pytest.fixture(scope="module")
def built(config_file) -> dict:
    result = vdi(config_file, "build", "office", "--version", "2026.11.1", timeout_s=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(vdi(config_file, "show", "office", timeout_s=900).stdout)


def test_build_registers_the_version_with_boot_files_and_log(built):
    assert built["version"] == "2026.11.1"
    assert built["os"] == "debian-bookworm"
    assert built["cmdline"].startswith("root=/dev/vda rw")
    assert Path(built["kernel"]).is_file() and Path(built["initrd"]).is_file()
    log = Path(built["build_log"]).read_text()
    for step in ("unpack base root", "ansible", "mkfs.ext4", "qemu-img convert"):
        assert f"{step}:" in log
    assert "failed=0" in log


def test_built_disk_is_qcow2_with_the_provisioned_root(built):
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output", "json", built["path"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    # debugfs reads the ext4 inside without mounting it: the role's files are there.
    raw = Path(built["path"]).with_name("check.raw")
    try:
        subprocess.run(["qemu-img", "convert", "-O", "raw", built["path"], str(raw)], check=True)
        issue = subprocess.run(
            ["debugfs", "-R", "cat /etc/smartwork-image", str(raw)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        raw.unlink(missing_ok=True)
    assert issue.stdout == "office 2026.11.1\n"


def test_built_image_boots_under_libvirt_to_the_login_console(built, libvirt_host, desktop_name):
    image = BootImage(
        name="office",
        version=built["version"],
        disk=Path(built["path"]),
        kernel=Path(built["kernel"]),
        initrd=Path(built["initrd"]),
        cmdline=built["cmdline"],
    )
    driver = LibvirtProvider(libvirt_host)
    name = desktop_name()
    try:
        driver.create_desktop(DesktopSpec(domain_name=name, image=image, memory_mib=512))
        console = wait_for_console(driver, name, "login:", timeout_s=LOGIN_TIMEOUT_S)
    finally:
        driver.close()
    assert "SMARTWORK-VDI desktop" in console
    assert "office 2026.11.1" in console


def test_same_version_again_is_refused_and_nothing_new_is_left(config_file, built):
    result = vdi(config_file, "build", "office", "--version", "2026.11.1", timeout_s=900)

    assert result.returncode == 1
    assert "version: office 2026.11.1 is already registered" in result.stderr
    store = Path(built["path"]).parents[1]
    assert [p.name for p in store.iterdir()] == [Path(built["path"]).parent.name]


def test_failing_playbook_registers_nothing_and_keeps_the_log(config_file, tmp_path):
    playbook = tmp_path / "broken.yml"
    playbook.write_text(
        "- name: Broken\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Fail\n      ansible.builtin.fail:\n        msg: on purpose\n"
    )

    result = vdi(config_file, "build", "broken", "--version", "1", "--playbook", str(playbook), timeout_s=900)

    assert result.returncode == 1
    assert "ansible failed" in result.stderr
    assert "no image named broken" in vdi(config_file, "show", "broken", timeout_s=900).stderr
    failed_logs = list((config_file.parent / "store" / "failed-builds").glob("broken-1-*.log"))
    assert failed_logs and "on purpose" in failed_logs[0].read_text()
    assert not [p for p in (config_file.parent / "store").iterdir() if p.name.startswith(".build-")]


def test_mirror_comes_from_apts_sources(tmp_path):
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://mirror.example.go.kr/debian/\nSuites: bookworm\n")

    assert debian_mirror([tmp_path / "missing.list", sources]) == "http://mirror.example.go.kr/debian"
    assert os.path.basename(debian_mirror()) == "debian"
