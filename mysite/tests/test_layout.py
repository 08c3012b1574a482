"""One direction between the packages: mysite and serving import chat, never the reverse,
and neither imports the other (serving names mysite's modules only as strings)."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level packages each non-test module of `package` imports, by module path."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if "tests" in path.relative_to(ROOT).parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(Path(path).relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("chat", {"mysite", "serving"}), ("mysite", {"serving"}), ("serving", {"mysite"})],
)
def test_a_package_imports_nothing_from_the_packages_beside_or_above_it(package, forbidden):
    wrong = {
        module: sorted(names & forbidden)
        for module, names in imported_packages(package).items()
        if names & forbidden
    }
    assert wrong == {}
