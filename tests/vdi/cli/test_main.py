"""Every `vdi` command explains itself with --help."""

import subprocess
import sys

import pytest

COMMANDS = [
    [],
    ["broker"],
    ["gateway"],
    ["demo"],
    ["lab"],
    ["db"],
    ["db", "upgrade"],
    ["image"],
    ["image", "build-demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "vdi")
def test_help(command):
    result = subprocess.run(
        [sys.executable, "-m", "vdi.cli", *command, "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: vdi")


def test_missing_config_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.toml"
    result = subprocess.run(
        [sys.executable, "-m", "vdi.cli", "--config", str(missing), "broker"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"cannot read configuration file {missing}" in result.stderr
