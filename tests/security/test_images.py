"""Regression tests for the image findings of the security review (issue 11)."""

from __future__ import annotations

import subprocess

import pytest

from images.files import CatalogError, inspect_qcow2


def qemu_img_create(path, *options: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(path), "1M"], check=True)


def test_finding_7_a_qcow2_with_an_external_data_file_is_refused(tmp_path):
    """qcow2 import accepted `data_file=`: QEMU would open that host path for every desktop of the image."""
    image = tmp_path / "golden.qcow2"
    qemu_img_create(image, "-o", f"data_file={tmp_path / 'elsewhere.raw'}")

    with pytest.raises(CatalogError) as caught:
        inspect_qcow2(image)

    assert (caught.value.field, caught.value.reason) == ("file", "has_data_file")


def test_finding_7_an_encrypted_qcow2_is_refused(tmp_path):
    image = tmp_path / "golden.qcow2"
    qemu_img_create(
        image,
        "--object",
        "secret,id=sec0,data=hunter2",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=sec0",
    )

    with pytest.raises(CatalogError) as caught:
        inspect_qcow2(image)

    assert (caught.value.field, caught.value.reason) == ("file", "encrypted")
    assert "hunter2" not in str(caught.value)


def test_finding_7_a_plain_qcow2_still_passes(tmp_path):
    image = tmp_path / "golden.qcow2"
    qemu_img_create(image)
    assert inspect_qcow2(image).virtual_size == 1 << 20
