"""dev.py and manage.py as a newcomer first types them, with the system's Python."""

import os
import shlex
import shutil
import subprocess

import pytest

from conftest import ROOT

TIMEOUT_SECONDS = 30


def system_python() -> str:
    """A python3 on PATH outside the virtualenv (skip unless it lacks Django, as a fresh one)."""
    venv_bin = str(ROOT / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    python = shutil.which("python3", path=path)
    if python is None:
        pytest.skip("no python3 on PATH outside the virtualenv")
    has_django = subprocess.run([python, "-c", "import django"], capture_output=True, cwd="/")
    if has_django.returncode == 0:
        pytest.skip(f"{python} has Django installed")
    return python


def test_manage_py_with_a_python_without_django_says_to_use_dev_py_in_one_line():
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    result = subprocess.run(
        [system_python(), "manage.py", "runserver"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
    )  # fmt: skip
    assert result.returncode == 1
    assert "python3 dev.py manage runserver" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_manage_py_without_django_suggests_the_command_quoted_so_it_can_be_pasted():
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    arguments = ["chat_post", "builds", "Build 512 passed", "--as", "ci"]
    result = subprocess.run(
        [system_python(), "manage.py", *arguments],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
    )  # fmt: skip
    suggested = result.stderr.split("run python3 dev.py manage ", 1)[1].split(" (it installs")[0]
    assert shlex.split(suggested) == arguments


def test_dev_py_names_an_unknown_command_and_exits_2():
    result = subprocess.run(
        [system_python(), "dev.py", "nonsense"],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("dev.py: unknown command 'nonsense'\n")
    assert "python3 dev.py run" in result.stderr  # and the usage
