"""Reading settings from environment variables: a value that cannot be read is an error
that names the variable (ImproperlyConfigured, one line), never a guess or a traceback
from deep inside Django. Launchers (serving.devserver, serving.supervisor, manage.py)
print that line and exit 1.
"""

import logging
import os

import limits
from django.core.exceptions import ImproperlyConfigured


def env_bool(name: str, default: bool) -> bool:
    """Read a yes/no environment variable; unknown spellings are an error, not a guess."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a yes/no value (true or false)")


def env_list(name: str, default: list[str]) -> list[str]:
    """Read a comma-separated environment variable."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def _raw(name: str) -> str | None:
    raw = os.environ.get(name)
    return None if raw is None or raw.strip() == "" else raw.strip()


def env_int(name: str, default: int, minimum: int = 0) -> int:
    """Read a whole number of at least `minimum`."""
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} is below {minimum}")
    return value


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    """Read a number (seconds, a rate) of at least `minimum`."""
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:  # also refuses nan
        raise ImproperlyConfigured(f"{name}={raw!r} is below {minimum:g}")
    return value


def env_choice(name: str, default: str, choices: list[str]) -> str:
    """Read one of a few words."""
    raw = _raw(name)
    if raw is None:
        return default
    if raw not in choices:
        raise ImproperlyConfigured(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return raw


def env_log_level(name: str, default: str) -> str:
    """Read a logging level name (DEBUG, INFO, WARNING, ERROR, CRITICAL), in any case."""
    raw = _raw(name)
    if raw is None:
        return default
    levels = [level for level in logging.getLevelNamesMapping() if level != "NOTSET"]
    if raw.upper() not in levels:
        raise ImproperlyConfigured(f"{name}={raw!r} is not one of {', '.join(levels)}")
    return raw.upper()


def env_rate(name: str, default: str) -> str:
    """Read a rate as the `limits` library writes it ("10/hour", "30/10seconds")."""
    raw = _raw(name) or default
    try:
        limits.parse(raw)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a rate such as 10/hour or 30/10seconds"
        ) from None
    return raw
