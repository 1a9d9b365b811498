"""The tests mirror the package tree, and share code only through tests/fixtures.

- A test module lives in tests/<dir>/ where <dir> is a package directory of the repository (tests/broker/web
  tests broker/web/); tests/e2e, tests/ansible and tests/security are cross-cutting and stay apart.
- Helpers live in tests/fixtures; elsewhere under tests/ there are only test modules and __init__.py.
- No module under tests/ imports a test module: only tests.fixtures.
- A fixtures module that defines fixtures is registered in tests/conftest.py's pytest_plugins.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.fixtures.common import ROOT

TESTS = ROOT / "tests"
# security: one regression test per finding of a review, named after it, across packages (docs/security.md).
CROSS_CUTTING = {"e2e", "ansible", "security"}
FIXTURES = TESTS / "fixtures"


def python_files() -> list[Path]:
    return sorted(path for path in TESTS.rglob("*.py") if "__pycache__" not in path.parts)


def directories() -> list[Path]:
    return sorted(path for path in [TESTS, *TESTS.rglob("*")] if path.is_dir() and path.name != "__pycache__")


def is_package(directory: Path) -> bool:
    return (directory / "__init__.py").is_file()


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import; a relative import is named by its dots."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def test_every_directory_under_tests_is_a_package():
    assert [str(d.relative_to(ROOT)) for d in directories() if not is_package(d)] == []


def test_every_test_module_mirrors_a_package_directory():
    misplaced = []
    for path in python_files():
        relative = path.parent.relative_to(TESTS)
        if not path.name.startswith("test_") or path == Path(__file__) or relative.parts[:1] == ("fixtures",):
            continue
        if relative.parts[:1] and relative.parts[0] in CROSS_CUTTING:
            continue
        if not relative.parts or not is_package(ROOT / relative):
            misplaced.append(str(path.relative_to(ROOT)))
    assert misplaced == [], "test modules whose directory mirrors no package directory"


def test_outside_fixtures_there_are_only_test_modules():
    helpers = [
        str(path.relative_to(ROOT))
        for path in python_files()
        if FIXTURES not in path.parents
        and path.name not in ("__init__.py", "conftest.py")
        and not path.name.startswith("test_")
    ]
    assert helpers == [], "helper modules belong in tests/fixtures"


def test_no_module_imports_a_test_module():
    offending = []
    for path in python_files():
        for line, module in imported_modules(path):
            shared = module == "tests.fixtures" or module.startswith("tests.fixtures.")
            if module.startswith(".") or (module.split(".")[0] == "tests" and not shared):
                offending.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert offending == [], "import shared code from tests.fixtures only"


def test_fixture_modules_are_registered_plugins():
    conftest = ast.parse((TESTS / "conftest.py").read_text())
    (plugins,) = [
        node.value
        for node in conftest.body
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["pytest_plugins"]
    ]
    registered = set(ast.literal_eval(plugins))
    defining = set()
    for path in FIXTURES.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                "fixture" in ast.unparse(decorator) for decorator in node.decorator_list
            ):
                defining.add(f"tests.fixtures.{path.stem}")
    assert defining - registered == set()
    assert registered - {f"tests.fixtures.{p.stem}" for p in FIXTURES.glob("*.py")} == set()
