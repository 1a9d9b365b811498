"""The golden image catalog through `vdi image import|list|show`: whole versions or nothing."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from broker.db import Database
from broker.db.migrate import upgrade
from broker.db.models import Image, ImageVersion
from broker.image_catalog import Catalog, CatalogError, DuplicateVersion, NewVersion
from images.files import inspect_qcow2
from tests.fixtures.broker import make_broker_config
from tests.fixtures.images import CONFIG_TOML, vdi


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "vdi.toml"
    path.write_text(CONFIG_TOML.format(db=tmp_path / "vdi.db", store=tmp_path / "store"))
    upgrade(f"sqlite:///{tmp_path / 'vdi.db'}")
    return path


@pytest.fixture
def qcow2(tmp_path: Path) -> Path:
    path = tmp_path / "office.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def count_versions(config_file: Path) -> int:
    database = Database(make_broker_config(config_file.parent / "vdi.db").database)
    with database.transaction() as session:
        return session.scalar(select(func.count()).select_from(ImageVersion))


def test_import_registers_a_read_only_copy_with_its_checksum(config_file, qcow2):
    result = vdi(
        config_file, "import", str(qcow2), "--name", "mois-office", "--version", "1", "--os", "debian-12"
    )

    assert result.returncode == 0, result.stderr
    shown = json.loads(vdi(config_file, "show", "mois-office").stdout)
    assert shown["sha256"] == sha256(qcow2)
    assert shown["size_bytes"] == qcow2.stat().st_size
    assert shown["virtual_size_bytes"] == 64 * 1024 * 1024
    assert shown["os"] == "debian-12"
    assert shown["immutable"] is True
    copy = Path(shown["path"])
    assert copy != qcow2 and sha256(copy) == shown["sha256"]
    assert stat.S_IMODE(copy.stat().st_mode) == 0o444


def test_list_shows_every_version(config_file, qcow2):
    for version in ("1", "2"):
        assert (
            vdi(config_file, "import", str(qcow2), "--name", "mois-office", "--version", version).returncode
            == 0
        )

    listed = json.loads(vdi(config_file, "list", "--json").stdout)
    table = vdi(config_file, "list").stdout

    assert [v["version"] for v in listed["mois-office"]] == ["1", "2"]
    assert "mois-office" in table and sha256(qcow2)[:16] in table


def test_matching_sha256_is_accepted(config_file, qcow2):
    result = vdi(
        config_file, "import", str(qcow2), "--name", "a", "--version", "1", "--sha256", sha256(qcow2)
    )

    assert result.returncode == 0, result.stderr


def test_checksum_mismatch_is_refused_naming_the_field_and_nothing_is_left(config_file, qcow2):
    result = vdi(config_file, "import", str(qcow2), "--name", "a", "--version", "1", "--sha256", "0" * 64)

    assert result.returncode == 1
    assert "sha256:" in result.stderr and "not the one given" in result.stderr
    assert count_versions(config_file) == 0
    assert list((config_file.parent / "store" / "catalog").iterdir()) == []


def test_a_raw_disk_is_refused_as_not_qcow2(config_file, tmp_path):
    raw = tmp_path / "disk.qcow2"
    raw.write_bytes(b"\0" * 65536)

    result = vdi(config_file, "import", str(raw), "--name", "a", "--version", "1")

    assert result.returncode == 1
    assert "file: disk.qcow2 is raw, not qcow2" in result.stderr
    assert count_versions(config_file) == 0


def test_duplicate_version_is_refused_and_the_first_is_unchanged(config_file, qcow2, tmp_path):
    assert vdi(config_file, "import", str(qcow2), "--name", "a", "--version", "1").returncode == 0
    other = tmp_path / "other.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(other), "128M"], check=True)

    result = vdi(config_file, "import", str(other), "--name", "a", "--version", "1")

    assert result.returncode == 1
    assert "version: a 1 is already registered" in result.stderr
    assert json.loads(vdi(config_file, "show", "a").stdout)["sha256"] == sha256(qcow2)
    assert count_versions(config_file) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "Bad Name", "--version", "1"], "name: use lower-case"),
        (["--name", "a", "--version", "../1"], "version: use letters"),
        (["--name", "a", "--version", "1", "--sha256", "xyz"], "sha256: expected 64"),
    ],
)
def test_malformed_fields_are_named(config_file, qcow2, args, message):
    result = vdi(config_file, "import", str(qcow2), *args)

    assert result.returncode == 1
    assert message in result.stderr
    assert count_versions(config_file) == 0


def test_missing_file_is_named(config_file, tmp_path):
    result = vdi(config_file, "import", str(tmp_path / "nope.qcow2"), "--name", "a", "--version", "1")

    assert result.returncode == 1
    assert "file:" in result.stderr and "not a readable file" in result.stderr


def test_show_unknown_image_names_the_field(config_file):
    result = vdi(config_file, "show", "nothing")

    assert result.returncode == 1
    assert "name: no image named nothing" in result.stderr


def test_qcow2_with_a_backing_file_is_refused(tmp_path, qcow2):
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(qcow2), str(overlay)], check=True
    )

    with pytest.raises(CatalogError) as caught:
        inspect_qcow2(overlay)

    assert caught.value.field == "file" and caught.value.reason == "has_backing_file"


def test_concurrent_duplicate_loses_on_the_unique_constraint(tmp_path, qcow2):
    """Two registrations that both pass the early check: the database decides, the loser leaves no files."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    upgrade(url)
    database = Database(make_broker_config(tmp_path / "race.db").database)
    catalog = Catalog(tmp_path / "store")
    new = NewVersion(name="a", version="1", file=qcow2)
    with database.transaction() as session:
        first = Path(catalog.register(session, new).path)
    with database.transaction() as session, pytest.raises(DuplicateVersion):
        # Skip the early check to reach the constraint, as a concurrent writer would.
        catalog._refuse_duplicate = lambda *_: None
        catalog.register(session, new)

    with database.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 1
    assert sha256(first) == sha256(qcow2)
    assert [path.name for path in (tmp_path / "store" / "catalog").iterdir()] == [first.parent.name]
