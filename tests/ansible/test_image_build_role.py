"""The smartwork_image_build role applied for real inside a debootstrapped root (smartwork_chroot)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from images.build import BuildLog, ensure_base_tarball
from images.config import ImageSettings
from tests.fixtures.ansible import ANSIBLE_DIR, ansible_playbook, recap

PLAYBOOK = str(ANSIBLE_DIR / "playbooks" / "image.yml")
EXTRA = ["-e", "smartwork_image_build_hostname=mois-desk", "-e", "smartwork_image_build_image_version=7"]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """A fresh unpack of the cached debootstrap root (debootstrapped once per machine, then reused)."""
    workdir = tmp_path_factory.mktemp("image-root")
    tarball = ensure_base_tarball(ImageSettings().cache_dir, "bookworm", BuildLog(workdir / "build.log"))
    root = workdir / "root"
    root.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(root)], check=True)
    return root


@pytest.fixture(scope="module")
def first_run(image_root):
    return ansible_playbook("-i", f"{image_root},", "-c", "smartwork_chroot", PLAYBOOK, *EXTRA)


def test_role_provisions_hostname_banner_user_and_autologin(image_root, first_run):
    assert recap(first_run)["changed"] > 0
    assert (image_root / "etc/hostname").read_text() == "mois-desk\n"
    assert "127.0.1.1\tmois-desk" in (image_root / "etc/hosts").read_text()
    assert "SMARTWORK-VDI" in (image_root / "etc/issue").read_text()
    assert (image_root / "etc/smartwork-image").read_text() == "office 7\n"
    assert any(line.startswith("desktop:") for line in (image_root / "etc/passwd").read_text().splitlines())
    dropin = image_root / "etc/systemd/system/getty@tty1.service.d/autologin.conf"
    assert "--autologin desktop" in dropin.read_text()
    assert (image_root / "etc/fstab").read_text().splitlines()[-1].startswith("/dev/vda\t/\text4")


def test_second_run_changes_nothing(image_root, first_run):
    assert recap(first_run)["failed"] == 0

    again = ansible_playbook("-i", f"{image_root},", "-c", "smartwork_chroot", PLAYBOOK, *EXTRA)

    assert recap(again)["changed"] == 0


def test_host_files_are_untouched(first_run):
    assert Path("/etc/hostname").read_text() != "mois-desk\n"
