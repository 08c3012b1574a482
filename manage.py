#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import shlex
import sys


def main():
    """Run administrative tasks; a Python without Django, or settings that cannot load, is
    told so in one line."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    try:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured
        from django.core.management import execute_from_command_line
    except ImportError as error:
        # Quoted as a shell reads them: the command can be pasted back as it is shown.
        arguments = shlex.join(sys.argv[1:]) or "help"
        sys.exit(
            f"manage.py: {error} in {sys.executable}: run python3 dev.py manage {arguments}"
            f" (it installs the project into .venv first), or .venv/bin/python manage.py"
            f" {arguments}."
        )
    try:
        settings.INSTALLED_APPS  # noqa: B018 (loads mysite.settings, which reads the environment)
    except ImproperlyConfigured as error:
        sys.exit(f"manage.py: {error}.")
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
