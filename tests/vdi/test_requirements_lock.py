"""requirements.lock (docs/development.md): every Python dependency pinned with hashes, in step with
pyproject.toml, and what scripts/setup.sh installs. `make lock-check` compares it with a fresh pip-compile run;
this test checks the same promises offline, in every `make test`."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.fixtures.common import ROOT

LOCK = ROOT / "requirements.lock"
# name==version, an environment marker maybe ("uvloop==0.23.0 ; sys_platform != \"win32\""), a backslash
ENTRY = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)(?: ;[^\\]*)? \\$")
PROJECT_VIA = "smartwork-vdi (pyproject.toml)"


def lock_entries() -> dict[str, dict]:
    """name -> {"version", "hashes", "via"} for every pin of the lock."""
    entries: dict[str, dict] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if match := ENTRY.match(line):
            current = entries[canonicalize_name(match[1])] = {"version": match[2], "hashes": [], "via": []}
        elif current is not None and line.strip().startswith("--hash=sha256:"):
            current["hashes"].append(line.strip().removesuffix(" \\"))
        elif current is not None and line.strip().startswith("#"):
            current["via"].append(line.strip().lstrip("#").strip().removeprefix("via").strip())
    return entries


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def direct_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    return [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["test"]]


@pytest.fixture(scope="module")
def entries() -> dict[str, dict]:
    return lock_entries()


def test_every_pin_has_a_sha256_hash(entries):
    assert len(entries) > 50
    assert [name for name, entry in entries.items() if not entry["hashes"]] == []


def test_every_dependency_of_pyproject_is_pinned_within_its_range(entries):
    build = [Requirement(text) for text in pyproject()["build-system"]["requires"]]
    out_of_step = []
    for requirement in direct_requirements() + build:
        entry = entries.get(canonicalize_name(requirement.name))
        if entry is None or not requirement.specifier.contains(entry["version"], prereleases=True):
            out_of_step.append(f"{requirement} (lock: {entry and entry['version']})")
    assert out_of_step == [], "run `make lock` after changing pyproject.toml"


def test_no_pin_stays_for_a_dependency_pyproject_dropped(entries):
    direct = {canonicalize_name(requirement.name) for requirement in direct_requirements()}
    stale = [
        name
        for name, entry in entries.items()
        if PROJECT_VIA in " ".join(entry["via"]) and name not in direct
    ]
    assert stale == [], "run `make lock` after changing pyproject.toml"


def test_setup_installs_the_lock_with_hashes_checked():
    setup = (ROOT / "scripts" / "setup.sh").read_text()

    assert "pip install -q --require-hashes --no-deps -r requirements.lock" in setup
    # The stamp that makes a second run quick changes with the lock, so a new lock is installed once.
    assert "cat pyproject.toml requirements.lock | sha256sum" in setup
