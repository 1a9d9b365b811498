"""Every `vdi` command explains itself with --help."""

import argparse
import subprocess
import sys

import pytest

from vdi.cli import build_parser

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


def every_parser(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("vdi",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from every_parser(child, (*path, name))


def test_every_command_and_argument_describes_itself():
    """`vdi X --help` of every command has a description, and every argument says what it is."""
    missing = []
    for path, parser in every_parser(build_parser()):
        if not parser.description:
            missing.append(" ".join(path))
        for action in parser._actions:
            if not action.help and not isinstance(action, argparse._SubParsersAction):
                missing.append(f"{' '.join(path)} {action.dest}")
    assert missing == []
