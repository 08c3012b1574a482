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


# Django resolves the user model of a ForeignKey at import, as every app's models do.
SETTINGS_READ_AT_IMPORT = {"AUTH_USER_MODEL"}


def settings_read_at_import(path: Path) -> set[str]:
    """The `settings.X` names a module reads outside any function (at import)."""
    tree = ast.parse(path.read_text(), str(path))
    in_functions = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for inner in ast.walk(node)
    }
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "settings"
        and id(node) not in in_functions
    }


def test_chat_reads_settings_when_used_so_that_tests_can_override_them():
    wrong = {
        str(path.relative_to(ROOT)): sorted(names - SETTINGS_READ_AT_IMPORT)
        for path in sorted((ROOT / "chat").rglob("*.py"))
        if "tests" not in path.relative_to(ROOT).parts
        and (names := settings_read_at_import(path)) - SETTINGS_READ_AT_IMPORT
    }
    assert wrong == {}


def chat_imports() -> dict[str, set[str]]:
    """The chat modules each non-test chat module imports, by module name."""
    graph = {}
    for path in sorted((ROOT / "chat").glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    names.add(f"chat.{node.module}")
                else:
                    names.update(f"chat.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chat."):
                names.add(node.module)
        graph[f"chat.{path.stem}"] = names
    return graph


def test_chat_modules_import_each_other_without_a_cycle():
    graph = chat_imports()
    cycles = []

    def visit(module: str, path: list[str]):
        for imported in sorted(graph.get(module, ())):
            if imported in path:
                cycles.append(path[path.index(imported) :] + [imported])
            elif imported not in seen:
                seen.add(imported)
                visit(imported, [*path, imported])

    for module in sorted(graph):
        seen = {module}
        visit(module, [module])
    assert cycles == []
