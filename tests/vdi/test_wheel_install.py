"""A wheel built from this checkout installs with plain `pip install` into a clean virtual environment (its
dependencies from the package index, as a release is installed) and its `vdi` command runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures.common import build_wheel


def run(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")


def test_the_wheel_installs_into_a_clean_venv_and_vdi_runs(tmp_path):
    built = build_wheel(tmp_path / "dist")
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("smartwork_vdi-*.whl")
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", str(venv)).returncode == 0

    installed = run(str(venv / "bin" / "pip"), "install", "-q", str(wheel))

    assert installed.returncode == 0, installed.stderr[-2000:]
    help_text = run(str(venv / "bin" / "vdi"), "--help", timeout=60)
    assert help_text.returncode == 0, help_text.stderr
    assert "doctor" in help_text.stdout and "broker" in help_text.stdout
    # The package data came along: the portal's templates, read from the installed package, not this checkout.
    where = run(
        str(venv / "bin" / "python"), "-c", "import broker.web; print(broker.web.__file__)", timeout=60
    )
    package = Path(where.stdout.strip()).parent
    assert venv in package.parents
    assert (package / "templates" / "base.html").is_file()
