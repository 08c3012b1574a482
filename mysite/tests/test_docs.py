"""The documents stay true to the code: README is a front door that shows the test command,
every relative link and anchor resolves, every close code and error code the server can send
is in docs/protocol.md, and every test and module the documents cite exists."""

import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT

README = ROOT / "README.md"
PROTOCOL = ROOT / "docs" / "protocol.md"
# The front door, not the manual (CONVENTIONS.md: djangoproject.com's is about 400 lines
# for a whole site; ours is one chat).
README_MAX_LINES = 200
# CI runs the README's test command (.ci/run): it must stay the one shown.
TEST_COMMAND = "python3 dev.py test"
# Where close codes are defined, as module-level CLOSE_* = <int>.
CLOSE_CODE_MODULES = (ROOT / "chat" / "protocol.py", ROOT / "serving" / "chat_daphne.py")
SERVER_PACKAGES = ("chat", "mysite", "serving")
# Documents whose rows name the tests that prove them.
DOCUMENTS_CITING_TESTS = ("architecture.md", "faults.md", "security.md")

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.MULTILINE)
SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")


def documents() -> list[Path]:
    """Every Markdown document of the project: README, docs/, the changelog, the results."""
    return [
        README,
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "CHANGELOG.md",
        ROOT / "benchmarks" / "RESULTS.md",
    ]


def prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors a document's headings make (a repeated heading gets -1, -2, ...)."""
    found: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        anchor = base = slug(heading)
        repeat = 0
        while anchor in found:
            repeat += 1
            anchor = f"{base}-{repeat}"
        found.add(anchor)
    return found


def broken_links(document: Path) -> list[str]:
    """The relative links (and #anchors) in a document that point at nothing."""
    broken = []
    for target in LINK.findall(prose(document.read_text())):
        if SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(target)
        elif anchor and anchor not in anchors(linked.read_text()):
            broken.append(target)
    return broken


def section(text: str, title: str) -> str:
    """The text under the level-2 heading `title`, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


def close_codes(module: Path) -> dict[str, int]:
    """The CLOSE_* = <int> constants a module defines."""
    codes = {}
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.startswith("CLOSE_"):
                    codes[target.id] = node.value.value
    return codes


def server_modules() -> list[Path]:
    """Every non-test module of the server's packages."""
    return [
        path
        for package in SERVER_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "tests" not in path.relative_to(ROOT).parts
    ]


def error_codes(module: Path) -> set[str]:
    """Error codes a module sends: FrameRefused("code", ...), _json_error(status, "code", ...)."""
    codes = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        position = {"FrameRefused": 0, "_json_error": 1}.get(name)
        if position is not None and len(node.args) > position:
            code = node.args[position]
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                codes.add(code.value)
    return codes


def undocumented(codes: set[str], protocol_text: str) -> set[str]:
    """The codes that the protocol's close-code or error-code tables do not name."""
    tables = section(protocol_text, "Close codes") + section(protocol_text, "Error codes")
    return {code for code in codes if not re.search(rf"(?<![\w.]){re.escape(code)}(?!\w)", tables)}


def readme_problems(text: str) -> list[str]:
    """What keeps a README from being the front door: its length, a missing test command."""
    problems = []
    if len(text.splitlines()) > README_MAX_LINES:
        problems.append(f"{len(text.splitlines())} lines, over {README_MAX_LINES}")
    blocks = FENCE.findall(text)
    commands = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    if TEST_COMMAND not in commands:
        problems.append(f"no code block shows {TEST_COMMAND!r}")
    return problems


def defined_tests() -> set[str]:
    """The name of every test function in the project."""
    names = set()
    for path in ROOT.glob("*/tests/*.py"):
        names.update(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.MULTILINE))
    return names


def missing_citations(text: str, tests: set[str]) -> set[str]:
    """Tests and source files a document names (in code spans) that do not exist."""
    cited = set(re.findall(r"`([^`\n]+)`", text))
    return {name for name in cited if re.fullmatch(r"test_\w+", name) and name not in tests} | {
        name
        for name in cited
        if re.fullmatch(r"[a-z_]+(?:/[a-z_]+)+\.(?:py|js|md)", name) and not (ROOT / name).exists()
    }


def doc_pointer_problem(module: Path) -> str | None:
    """Why a module's docstring does not end by naming its doc page and section, or None.

    Zulip-style, each module names the page that explains it, as its docstring's last line:
    "Explained in docs/architecture.md, 'The delivery path'."
    """
    docstring = ast.get_docstring(ast.parse(module.read_text()))
    if docstring is None:
        return None
    pointer = re.fullmatch(
        r"Explained in (docs/[\w-]+\.md)(?:, '(.+)')?\.", docstring.splitlines()[-1]
    )
    if pointer is None:
        return "its docstring's last line names no doc page"
    page, heading = ROOT / pointer[1], pointer[2]
    if not page.exists():
        return f"{pointer[1]} does not exist"
    if heading is not None and slug(heading) not in anchors(page.read_text()):
        return f"{pointer[1]} has no heading {heading!r}"
    return None


def test_readme_is_a_front_door_that_shows_the_test_command():
    assert readme_problems(README.read_text()) == []


@pytest.mark.parametrize("document", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_and_anchor_points_at_something(document):
    assert broken_links(document) == []


def test_every_close_code_the_server_defines_is_in_the_protocol():
    codes = {str(code) for module in CLOSE_CODE_MODULES for code in close_codes(module).values()}
    assert codes, "no CLOSE_* constant found: did the close codes move?"
    assert undocumented(codes, PROTOCOL.read_text()) == set()


def test_every_error_code_the_server_can_send_is_in_the_protocol():
    codes = set().union(*(error_codes(module) for module in server_modules()))
    assert codes, "no error code found: did FrameRefused or _json_error move?"
    assert undocumented(codes, PROTOCOL.read_text()) == set()


@pytest.mark.parametrize("name", DOCUMENTS_CITING_TESTS)
def test_every_test_and_file_a_document_cites_exists(name):
    text = (ROOT / "docs" / name).read_text()
    assert missing_citations(text, defined_tests()) == set()


@pytest.mark.parametrize("module", sorted((ROOT / "chat").glob("*.py")), ids=lambda path: path.name)
def test_each_chat_module_names_the_doc_page_that_explains_it(module):
    assert doc_pointer_problem(module) is None


# Each check above catches what it is for: fed a broken input, it finds the fault.


def test_the_readme_check_catches_a_long_readme_and_a_missing_test_command():
    good = f"# Chat\n\n```sh\n{TEST_COMMAND}    # lints, runs the suite\n```\n"
    assert readme_problems(good) == []
    assert readme_problems(good + "line\n" * README_MAX_LINES) != []
    assert readme_problems(good.replace("dev.py test", "dev.py tests")) != []
    assert readme_problems(f"Run {TEST_COMMAND} outside a code block.\n") != []


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## What happens when…\n")
    document = tmp_path / "doc.md"
    document.write_text(
        "## Here\n[ok](other.md#what-happens-when) [self](#here) [web](https://example.com)"
        " `[code](nowhere.md)`\n[gone](missing.md) [bad](other.md#nothing) [bad too](#there)\n"
    )
    assert broken_links(document) == ["missing.md", "other.md#nothing", "#there"]


def test_the_code_checks_catch_a_code_missing_from_the_protocol(tmp_path):
    module = tmp_path / "module.py"
    module.write_text(
        "CLOSE_A = 4001\nCLOSE_B = 4002\n"
        "def f():\n"
        "    raise protocol.FrameRefused('too_loud', 'x')\n"
        "    return _json_error(400, 'too_quiet', 'y')\n"
    )
    assert close_codes(module) == {"CLOSE_A": 4001, "CLOSE_B": 4002}
    assert error_codes(module) == {"too_loud", "too_quiet"}
    protocol = (
        "## Close codes\n| 4001 | a |\n## Error codes\n| `too_loud` | b |\n## Else\n4002 too_quiet"
    )
    codes = {"4001", "4002", "too_loud", "too_quiet"}
    assert undocumented(codes, protocol) == {"4002", "too_quiet"}


def test_the_citation_check_catches_a_test_or_file_that_does_not_exist():
    text = "`test_real` `test_renamed` `chat/protocol.py` `chat/moved.py` `a phrase`"
    assert missing_citations(text, {"test_real"}) == {"test_renamed", "chat/moved.py"}


def test_the_doc_pointer_check_catches_a_missing_page_or_heading(tmp_path):
    module = tmp_path / "module.py"
    for last_line, problem in [
        ("Explained in docs/architecture.md, 'The delivery path'.", None),
        ("Explained in docs/protocol.md.", None),
        ("Explained in docs/nowhere.md.", "docs/nowhere.md does not exist"),
        ("Explained in docs/architecture.md, 'No such part'.", "has no heading"),
        ("A summary only.", "names no doc page"),
    ]:
        module.write_text(f'"""A summary.\n\n{last_line}\n"""\n')
        found = doc_pointer_problem(module)
        assert found is None if problem is None else problem in found
