"""The smartwork_image_build role applied for real inside a debootstrapped root (smartwork_chroot).

With `smartwork_image_build_desktop` the image gets the SBC sessions' desktop from the smartwork_session_host
role's own tasks. The debootstrapped root has no package index (nothing can be installed offline), so that run
leaves packages to the machine building images (`smartwork_session_host_manage_packages: false`, no console X
server packages) and the locale alone (locale-gen needs the locales package); the files are applied for real.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from images.build import BuildLog, ensure_base_tarball
from images.config import ImageSettings
from tests.fixtures.ansible import ANSIBLE_DIR, ansible_playbook, recap
from vdi.lab.session_hosts import DESKTOP_FILES, ROLE_FILES

PLAYBOOK = str(ANSIBLE_DIR / "playbooks" / "image.yml")
EXTRA = ["-e", "smartwork_image_build_hostname=mois-desk", "-e", "smartwork_image_build_image_version=7"]
DESKTOP = {
    "smartwork_image_build_desktop": True,
    "smartwork_image_build_desktop_packages": [],
    "smartwork_session_host_manage_packages": False,
    "smartwork_session_host_locale": "",
}
DESKTOP_EXTRA = [*EXTRA, "-e", json.dumps(DESKTOP)]


def unpacked_root(workdir: Path) -> Path:
    """A fresh unpack of the cached debootstrap root (debootstrapped once per machine, then reused)."""
    tarball = ensure_base_tarball(ImageSettings().cache_dir, "bookworm", BuildLog(workdir / "build.log"))
    root = workdir / "root"
    root.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(root)], check=True)
    return root


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    return unpacked_root(tmp_path_factory.mktemp("image-root"))


@pytest.fixture(scope="module")
def desktop_root(tmp_path_factory) -> Path:
    return unpacked_root(tmp_path_factory.mktemp("desktop-image-root"))


@pytest.fixture(scope="module")
def desktop_run(desktop_root):
    return ansible_playbook("-i", f"{desktop_root},", "-c", "smartwork_chroot", PLAYBOOK, *DESKTOP_EXTRA)


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
    # The demo's minimal image: no desktop unless asked for.
    assert not (image_root / "etc/smartwork-vdi").exists()
    assert not (image_root / "etc/profile.d/smartwork-desktop.sh").exists()


def test_second_run_changes_nothing(image_root, first_run):
    assert recap(first_run)["failed"] == 0

    again = ansible_playbook("-i", f"{image_root},", "-c", "smartwork_chroot", PLAYBOOK, *EXTRA)

    assert recap(again)["changed"] == 0


def test_host_files_are_untouched(first_run):
    assert Path("/etc/hostname").read_text() != "mois-desk\n"


def test_the_desktop_option_gives_the_image_the_sbc_sessions_desktop(desktop_root, desktop_run):
    assert recap(desktop_run)["failed"] == 0 and recap(desktop_run)["changed"] > 0
    # The session host role's own files, byte for byte: a VDI desktop and an SBC session look alike.
    for source, target, mode in DESKTOP_FILES:
        installed = desktop_root / "etc" / target
        assert installed.read_bytes() == (ROLE_FILES / source).read_bytes(), target
        assert installed.stat().st_mode & 0o777 == mode, target
    # The console's autologin (tty1, the desktop user) starts X with the session script.
    profile = (desktop_root / "etc/profile.d/smartwork-desktop.sh").read_text()
    assert '"$(id -un)" = "desktop"' in profile and "/dev/tty1" in profile
    assert "exec startx /etc/smartwork-vdi/xsession" in profile
    assert (
        subprocess.run(["sh", "-n", str(desktop_root / "etc/profile.d/smartwork-desktop.sh")]).returncode == 0
    )
    dropin = desktop_root / "etc/systemd/system/getty@tty1.service.d/autologin.conf"
    assert "--autologin desktop" in dropin.read_text()


def test_the_desktop_option_twice_changes_nothing(desktop_root, desktop_run):
    assert recap(desktop_run)["failed"] == 0

    again = ansible_playbook("-i", f"{desktop_root},", "-c", "smartwork_chroot", PLAYBOOK, *DESKTOP_EXTRA)

    assert recap(again)["changed"] == 0
