#!/usr/bin/env python3
"""One entry point for a fresh machine with only Python 3.11+.

    python3 dev.py run     install into .venv, then start the chat on http://127.0.0.1:8000/chat/
    python3 dev.py test    install into .venv (test tools too), then lint and run the whole suite
    python3 dev.py bench   install into .venv (load tools too), then run the load benchmark;
                           `bench NAME ...` runs benchmarks/NAME.py instead (history, churn...)
    python3 dev.py manage  install into .venv, then run manage.py (createsuperuser, migrate, ...)
    python3 dev.py serve   install into .venv, then run serving.supervisor (N daphne processes)

Extra arguments go to runserver (run), pytest (test), benchmarks.load (bench), manage.py
(manage) or serving.supervisor (serve). Uses only the standard library until the virtualenv
exists; reinstalls only when a requirements file changed.
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
REQUIREMENT_FILES = {
    "run": "requirements.txt",
    "test": "requirements-dev.txt",
    "bench": "requirements-bench.txt",
    "manage": "requirements.txt",
    "serve": "requirements.txt",
}
# The exit status of a command line dev.py cannot read, as argparse's.
USAGE_ERROR = 2
# What each command runs inside the virtualenv, before its extra arguments ("test" lints first).
COMMANDS = {
    "run": ["-m", "serving.devserver"],
    "bench": ["-m", "benchmarks.load"],
    "manage": ["manage.py"],
    "serve": ["-m", "serving.supervisor"],
    "test": ["-m", "pytest"],
}


def requirements_digest() -> str:
    """Digest of every requirements file, so any change triggers a reinstall."""
    digest = hashlib.sha256()
    for name in sorted(set(REQUIREMENT_FILES.values())):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_virtualenv(requirements: str):
    """Create .venv and install the requirements unless they are already installed."""
    if not PYTHON.exists():
        print(f"Creating the virtualenv in {VENV} ...", flush=True)
        venv.create(VENV, with_pip=True)
    stamp = VENV / f"installed-{requirements}.sha256"
    digest = requirements_digest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"Installing {requirements} ...", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(ROOT / requirements)], check=True)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 (dev.py runs on the system Python)
        sys.exit("Python 3.11 or newer is needed.")
    command, rest = (argv[0], argv[1:]) if argv else ("run", [])
    if command not in REQUIREMENT_FILES:
        print(f"dev.py: unknown command {command!r}\n{__doc__}", file=sys.stderr)
        return USAGE_ERROR
    os.chdir(ROOT)
    ensure_virtualenv(REQUIREMENT_FILES[command])
    if command == "test":
        for lint in (["check", "."], ["format", "--check", "."]):
            if subprocess.run([str(PYTHON), "-m", "ruff", *lint]).returncode != 0:
                return 1
    program = COMMANDS[command]
    if command == "bench" and rest and (ROOT / "benchmarks" / f"{rest[0]}.py").is_file():
        program, rest = ["-m", f"benchmarks.{rest[0]}"], rest[1:]
    os.execv(PYTHON, [str(PYTHON), *program, *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
